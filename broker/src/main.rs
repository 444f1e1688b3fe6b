//! `unefois`: the broker (`serve`), the federation PKI (`certs`) and participant commands.
//! This file only parses flags and calls into the library.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use broker::listener::{AcceptLimits, TlsFiles};
use broker::registry::{Registry, Role};
use clap::{Parser, Subcommand, ValueEnum};
use unefois_certs::{Pki, Validity};
use unefois_proto::v1 as pb;
use unefois_proto::v1::audit_client::AuditClient;
use unefois_proto::v1::consents_client::ConsentsClient;
use unefois_proto::v1::exchange_client::ExchangeClient;
use unefois_proto::v1::registry_client::RegistryClient;

/// mimalloc instead of glibc's malloc: a fetch makes about 240 allocations, and glibc spent
/// about 12 % of the broker's user-space instructions on them (0.91 × the instructions per fetch,
/// 0.93 × the CPU; BENCHMARKS.md, run J). Built without transparent huge pages (`no_thp`): with
/// them, the peak RSS tripled for the same work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Fetch a signed attestation and check its signature against HOME/pki/attestation.vkey.
    Fetch(FetchArgs),
    /// Check a receipt or access history file offline, without the broker: signatures,
    /// inclusion proofs, payload hash, and consistency with a later checkpoint.
    Verify(VerifyArgs),
    /// A person's access history at a guichet (their ID token, or a mandate), each access with
    /// its audit entry and inclusion proof.
    Accesses(AccessesArgs),
    /// Grant, revoke and list the consents of a person.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Verify, follow and export the audit log (auditors).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Pre-fill a form for a person at a guichet: each field with its source or its reason.
    Prefill(PrefillArgs),
    /// Confirm (or reject) a preview the person checked: the kept values become attestations.
    Confirm(ConfirmArgs),
    /// Create, revoke and list the mandates people give mediation structures.
    #[command(subcommand)]
    Mandate(MandateCommand),
    /// Providers' readiness, circuit breakers and load (operators).
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Development helpers (never for production).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Back up what cannot be rebuilt, the journal and the keys of HOME/data, safely while the
    /// broker runs. The backup holds the broker's SECRET KEYS (files 0600): store it like them.
    Backup(BackupArgs),
    /// Restore a backup into HOME/data, the broker stopped: verifies it whole, refuses to put the
    /// log behind a checkpoint already handed out (unless --force); the state is rebuilt at start.
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
struct BackupArgs {
    /// The broker's home; its data directory HOME/data is backed up.
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The backup directory to create (it must not exist). It holds secret keys.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup directory (`unefois backup --out`).
    #[arg(long, value_name = "PATH")]
    from: PathBuf,
    /// The broker's home; the backup is restored into HOME/data. The journal and keys there are
    /// moved to HOME/data/replaced-<time>/, never deleted.
    #[arg(long)]
    home: PathBuf,
    /// Restore even if the log would go behind a checkpoint already handed out (a fork that
    /// auditors will see).
    #[arg(long)]
    force: bool,
    /// A checkpoint an auditor kept (`unefois audit verify` saves
    /// HOME/audit/<participant>.checkpoint): the backup must hold it. Repeatable.
    #[arg(long = "trusted-checkpoint", value_name = "FILE")]
    trusted_checkpoints: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct PrefillArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person, scheme:value.
    #[arg(long)]
    subject: String,
    /// The form id (`inscription_cantine`).
    #[arg(long)]
    form: String,
    /// Preview: show the values for the person to check; nothing is issued until `confirm`.
    #[arg(long)]
    preview: bool,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
}

#[derive(clap::Args)]
struct ConfirmArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person, scheme:value (the preview's).
    #[arg(long)]
    subject: String,
    /// The prefill id the preview printed.
    #[arg(long)]
    prefill_id: String,
    /// Only these attestation types (comma-separated); all of the preview when omitted.
    #[arg(long = "type", value_delimiter = ',')]
    attestation_types: Vec<String>,
    /// The person rejects the preview: nothing is released.
    #[arg(long)]
    reject: bool,
    /// The mandate an agent of a mediation structure acts under (the preview's).
    #[arg(long, default_value = "")]
    mandate: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
}

#[derive(Subcommand)]
enum MandateCommand {
    /// Record a mandate given by a person present at the desk (an agent's certificate:
    /// `--as france-services-lyon/a.martin`).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The person giving the mandate, scheme:value.
        #[arg(long)]
        subject: String,
        /// The purposes covered (comma-separated).
        #[arg(long = "purpose", value_delimiter = ',', required = true)]
        purposes: Vec<String>,
        /// Duration in days: 1, 31, 182 or 365.
        #[arg(long, default_value_t = 31)]
        days: u32,
        /// The signed mandate document (only its SHA-256 is sent).
        #[arg(long)]
        document: PathBuf,
        /// The person's OIDC ID token for the structure's audience (development:
        /// `unefois dev id-token --subject ... --aud france-services-lyon`).
        #[arg(long, env = "UNEFOIS_ID_TOKEN", hide_env_values = true)]
        id_token: String,
        /// An idempotency key: a retry with the same key returns the same mandate.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Revoke a mandate: an agent of its structure, or a guichet with the person's ID token.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The mandate id.
        mandate_id: String,
        /// The person's ID token, when a guichet revokes for them.
        #[arg(long, default_value = "")]
        id_token: String,
    },
    /// List mandates: a structure's own, or a person's (a guichet needs their ID token).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The person, scheme:value; omitted: every mandate of the caller's structure.
        #[arg(long, default_value = "")]
        subject: String,
        /// The person's ID token, when a guichet lists for them.
        #[arg(long, default_value = "")]
        id_token: String,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Print an ID token of the development identity provider (its key is public:
    /// examples/dev-idp/) for a sample person, as identity evidence for a guichet.
    IdToken {
        /// The person, `test:...` or a canonical `pivot:...` (docs/subjects.md).
        #[arg(long)]
        subject: String,
        /// The audience: the guichet's `oidc_audience` (by default its participant id).
        #[arg(long)]
        aud: String,
        /// The development identity provider's signing key.
        #[arg(long, default_value = "examples/dev-idp/dev-signing-key.json")]
        key: PathBuf,
        /// How long the token is valid, in seconds (the broker still refuses a token issued
        /// longer ago than the identity provider's `max_token_age_seconds` in the registry).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(1..=86_400))]
        ttl: i64,
    },
}

#[derive(Subcommand)]
enum ProvidersCommand {
    /// One line per attestation type: adapter, breaker, calls in flight.
    Status(ClientArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the log against the pinned log key and the last trusted checkpoint, download every
    /// entry and recompute the root; exits non-zero naming the first bad entry or the fork.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
        /// Where the last verified checkpoint is kept (default HOME/audit/<participant>.checkpoint).
        #[arg(long)]
        trusted: Option<PathBuf>,
        /// The log's verifier key file (default HOME/pki/log.vkey).
        #[arg(long)]
        log_key: Option<PathBuf>,
    },
    /// Print the latest events, one line each; with --follow, then the new ones as they land.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// How many of the latest events.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u64,
        /// Keep following the log (every second) until Ctrl-C. Each read is itself an
        /// `audit_read` entry, so these show too.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Save a signed checkpoint (any participant), with the consistency proofs from the
    /// checkpoints of a receipt or access history file: `unefois verify FILE --checkpoint OUT`
    /// then checks, offline, that the log only grew since.
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
        /// The tree size of the checkpoint wanted (default: the latest).
        #[arg(long, default_value_t = 0)]
        size: u64,
        /// A file of `unefois fetch --out` or `unefois accesses --out`: proofs from its
        /// checkpoints' sizes are included.
        #[arg(long = "for", value_name = "FILE")]
        for_file: Option<PathBuf>,
        /// Where to write it (JSON); standard output when omitted.
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
    },
    /// Export events as JSON lines: {"index":N,"entry":<the exact entry>}.
    Export {
        #[command(flatten)]
        client: ClientArgs,
        /// Output format (only jsonl).
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// First entry index.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
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
    #[arg(long, default_value_t = AcceptLimits::default().handshake_timeout.as_secs())]
    handshake_timeout_secs: u64,
    /// Participant connections open at once, in all (more are closed before TLS); lowered at
    /// start to fit under the file-descriptor limit.
    #[arg(long, default_value_t = AcceptLimits::default().max_connections)]
    max_connections: usize,
    /// Connections open at once per participant certificate (each agent has its own count);
    /// over it, calls are refused with RESOURCE_EXHAUSTED / TOO_MANY_CONNECTIONS.
    #[arg(long, default_value_t = AcceptLimits::default().max_connections_per_participant)]
    max_connections_per_participant: usize,
    /// Largest request message accepted, in bytes.
    #[arg(long, default_value_t = broker::grpc::limits::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Seconds calls in flight have to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 20)]
    drain_timeout_secs: u64,
    /// Seconds a pre-fill preview waits for the citizen's confirmation before it is forgotten.
    #[arg(long, default_value_t = broker::preview::DEFAULT_TTL.as_secs())]
    preview_ttl_secs: u64,
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
    /// Revoke a participant's (`caf`) or an agent's (`france-services-lyon/a.martin`) certificate;
    /// a mediation structure's agents (`agents/<structure>/`) are revoked with it.
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
    /// What the caller may do: its roles and habilitations; with --forms, --types or
    /// --purposes, what the federation declares.
    Show(RegistryShowArgs),
}

#[derive(clap::Args)]
struct RegistryShowArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The forms a guichet may pre-fill, with the source of each field.
    #[arg(long)]
    forms: bool,
    /// The attestation types, with their provider and claims.
    #[arg(long)]
    types: bool,
    /// The purposes, with their legal reference.
    #[arg(long)]
    purposes: bool,
}

#[derive(clap::Args)]
struct FetchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person or company, scheme:value (`test:alice`, `siren:…`).
    #[arg(long)]
    subject: String,
    /// The attestation type (`caf.quotient_familial`).
    #[arg(long = "type")]
    attestation_type: String,
    /// The purpose code the data is needed for.
    #[arg(long)]
    purpose: String,
    /// The claims wanted, comma-separated; all those the habilitation allows when omitted.
    #[arg(long, value_delimiter = ',')]
    claims: Vec<String>,
    /// An idempotency key: a retry with the same key returns the same attestation.
    #[arg(long, default_value = "")]
    request_id: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
    /// Also write the whole answer (signed attestation and receipt) to FILE as JSON, for
    /// `unefois verify FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// A file of `unefois fetch --out` or `unefois accesses --out`.
    file: PathBuf,
    /// Where the verifier keys are by default (HOME/pki).
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The attestation verifier key (default HOME/pki/attestation.vkey).
    #[arg(long, value_name = "FILE")]
    attestation_key: Option<PathBuf>,
    /// The log verifier key (default HOME/pki/log.vkey).
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// A later checkpoint to check the file's against: `unefois audit checkpoint --for FILE
    /// --out LATER` (with the consistency proofs), or a bare signed note.
    #[arg(long, value_name = "LATER")]
    checkpoint: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AccessesArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person, scheme:value.
    #[arg(long)]
    subject: String,
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Also write the history (each access with its entry and proof) to FILE as JSON, for
    /// `unefois verify FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// Record a person's consent at a guichet.
    Grant(ConsentGrantArgs),
    /// Revoke a consent: one the caller recorded, or any of the person's with their ID token.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The consent id.
        consent_id: String,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
    /// List a person's consents that the caller may see (all of them with their ID token).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The person, scheme:value.
        #[arg(long)]
        subject: String,
        /// Only the consents given to this consumer.
        #[arg(long, default_value = "")]
        consumer: String,
        #[command(flatten)]
        evidence: EvidenceArgs,
    },
}

/// The person's own evidence, or the mandate an agent acts under.
#[derive(clap::Args)]
struct EvidenceArgs {
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
}

#[derive(clap::Args)]
struct ConsentGrantArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The person giving consent, scheme:value.
    #[arg(long)]
    subject: String,
    /// The participant the consent is given to.
    #[arg(long)]
    consumer: String,
    /// The attestation types covered (repeat the flag or separate with commas).
    #[arg(long = "type", value_delimiter = ',', required = true)]
    attestation_types: Vec<String>,
    /// The purpose code covered.
    #[arg(long)]
    purpose: String,
    /// How many days the consent lasts.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// An idempotency key: a retry with the same key returns the same consent.
    #[arg(long, default_value = "")]
    request_id: String,
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    id_token: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    mandate: String,
}

/// Standard output was closed by its reader (`unefois audit export | head -1`): the command
/// ends quietly with exit 0, as Unix tools do. `println!` would panic there (exit 101), so
/// everything goes through [`outln!`]. Restoring SIGPIPE's default action instead would need
/// `unsafe` and end the process by a signal (status 141 under `pipefail`), not with 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
struct StdoutClosed;

/// An error writing to standard output: [`StdoutClosed`] for a closed pipe.
fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// `println!` that returns the write's error (a closed pipe as [`StdoutClosed`]) instead of
/// panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)?
    };
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): what it wanted, it has.
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a cause its parent's message already ends with.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.ends_with(&cause) {
                    message.push_str(": ");
                    message.push_str(&cause);
                }
            }
            let _ = writeln!(std::io::stderr(), "error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Certs(cmd) => certs(cmd),
        Command::Registry(RegistryCommand::Show(args)) => registry_show(args).await,
        Command::Fetch(args) => fetch(args).await,
        Command::Consent(ConsentCommand::Grant(args)) => consent_grant(args).await,
        Command::Consent(ConsentCommand::Revoke {
            client,
            consent_id,
            evidence,
        }) => consent_revoke(client, consent_id, evidence).await,
        Command::Consent(ConsentCommand::List {
            client,
            subject,
            consumer,
            evidence,
        }) => consent_list(client, subject, consumer, evidence).await,
        Command::Audit(AuditCommand::Verify {
            client,
            trusted,
            log_key,
        }) => audit_verify(client, trusted, log_key).await,
        Command::Audit(AuditCommand::Tail {
            client,
            lines,
            follow,
        }) => audit_tail(client, lines, follow).await,
        Command::Audit(AuditCommand::Checkpoint {
            client,
            size,
            for_file,
            out,
        }) => audit_checkpoint(client, size, for_file, out).await,
        Command::Verify(args) => verify(args),
        Command::Accesses(args) => accesses(args).await,
        Command::Providers(ProvidersCommand::Status(client)) => providers_status(client).await,
        Command::Prefill(args) => prefill(args).await,
        Command::Confirm(args) => confirm(args).await,
        Command::Mandate(cmd) => mandate(cmd).await,
        Command::Dev(DevCommand::IdToken {
            subject,
            aud,
            key,
            ttl,
        }) => {
            let key = broker::identity::dev::DevKey::load(&key)?;
            let claims = broker::identity::dev::claims_lasting(
                &subject,
                &aud,
                time::OffsetDateTime::now_utc(),
                ttl,
            )?;
            outln!("{}", key.sign(&claims)?);
            Ok(())
        }
        Command::Audit(AuditCommand::Export {
            client,
            format,
            from,
        }) => audit_export(client, &format, from).await,
        Command::Backup(args) => backup(args),
        Command::Restore(args) => restore(args),
    }
}

fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let data_dir = args.home.join("data");
    let report = broker::backup::backup(&data_dir, &args.out)
        .with_context(|| format!("backup of {} failed", data_dir.display()))?;
    outln!(
        "backup written to {}: {} entries (root {}), {} segment(s), {} key file(s)",
        args.out.display(),
        report.tree_size,
        hex::encode(report.root),
        report.segments,
        report.keys
    );
    if report.tail_bytes_left_out > 0 {
        outln!(
            "left out {} bytes at the journal's tail (a record being written)",
            report.tail_bytes_left_out
        );
    }
    outln!("it holds the broker's secret keys: store it like them");
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let data_dir = args.home.join("data");
    let options = broker::backup::RestoreOptions {
        force: args.force,
        trusted_checkpoints: args.trusted_checkpoints,
    };
    let report = broker::backup::restore(&args.from, &data_dir, &options).map_err(|e| {
        if e.is_fork() {
            anyhow::anyhow!("{e}; --force restores anyway")
        } else {
            e.into()
        }
    })?;
    for overridden in &report.overridden {
        let _ = writeln!(
            std::io::stderr(),
            "warning: restoring anyway (--force): {overridden}"
        );
    }
    outln!(
        "restored {} entries (root {}) and {} key file(s) into {}",
        report.tree_size,
        hex::encode(report.root),
        report.keys,
        data_dir.display()
    );
    if let Some(replaced) = &report.replaced {
        outln!(
            "the journal and keys it replaced are in {} (they hold secret keys: remove them once the restore is checked)",
            replaced.display()
        );
    }
    outln!("the derived state is rebuilt from the journal at the broker's next start");
    Ok(())
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
    // What the broker creates from here on (its data directory; sled's files) is for its user
    // only; the files it publishes (verifier keys) are made readable explicitly.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Before anything is said: a second broker on this home is refused by name, not after it
    // printed that it listens.
    broker::data_lock::holder(&args.home.join("data")).map_err(|e| match e {
        broker::data_lock::DataLockError::InUse { pid, .. } => anyhow::anyhow!(
            "another broker is using {} (pid {}); stop it first, or give this one another --home",
            args.home.display(),
            pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
        ),
        other => other.into(),
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ops = tokio::net::TcpListener::bind(args.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.ops_listen))?;
    let addr = listener.local_addr()?;
    let ops_addr = ops.local_addr()?;
    outln!("Une Fois broker listening on {addr} (mTLS)");
    outln!("Health probe on http://{ops_addr}/healthz");
    outln!("Try, in another terminal:");
    let home = args.home.display();
    outln!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-lyon");
    outln!("  cargo run -q -- registry show --home {home} --addr {addr} --as mairie-test");
    outln!("  curl http://{ops_addr}/readyz");
    let config = broker::Config {
        registry: args.registry,
        tls: TlsFiles::in_dir(&pki_dir),
        data_dir: args.home.join("data"),
        ops_listener: Some(ops),
        accept: AcceptLimits {
            handshake_timeout: std::time::Duration::from_secs(args.handshake_timeout_secs.max(1)),
            max_connections: args.max_connections.max(1),
            max_connections_per_participant: args.max_connections_per_participant.max(1),
            ..AcceptLimits::default()
        },
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
        max_request_bytes: args.max_request_bytes,
        #[cfg(feature = "fault-injection")]
        journal_faults: None,
        preview_ttl: std::time::Duration::from_secs(args.preview_ttl_secs.max(1)),
        reload: Some(reload_on_sighup()?),
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
        outln!(
            "Created a development PKI in {} (trust domain {}): not for production.",
            pki_dir.display(),
            registry.trust_domain()
        );
    }
    Ok(())
}

/// SIGHUP asks the broker to read its registry and CRL again (the outcome is logged).
fn reload_on_sighup() -> anyhow::Result<tokio::sync::mpsc::Receiver<broker::server::ReloadRequest>>
{
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if tx.send(None).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
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
            outln!(
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
            outln!(
                "{} issued: {}",
                issued.spiffe_id,
                issued.cert_path.display()
            );
        }
        CertsCommand::Revoke { dir, name } => {
            let revoked = Pki::open(&dir)?.revoke(&name)?;
            let crl = dir.join("crl.pem");
            if revoked.is_empty() {
                outln!("{name} was already revoked in {}", crl.display());
            }
            for revoked in &revoked {
                if revoked == &name {
                    outln!("{name} revoked in {}", crl.display());
                } else {
                    outln!(
                        "{revoked} revoked in {} (an agent of {name})",
                        crl.display()
                    );
                }
            }
            if !revoked.is_empty() {
                // The PKI directory is HOME/pki; a broker running on HOME holds HOME/data/broker.lock
                // with its process id.
                let lock = dir
                    .parent()
                    .map(|home| home.join("data").join(broker::data_lock::LOCK_FILE))
                    .filter(|l| l.is_file());
                match lock {
                    Some(lock) => outln!(
                        "the broker refuses them once it reloads the CRL: `kill -HUP $(cat {})` \
                         (or restart it)",
                        lock.display()
                    ),
                    None => outln!(
                        "the broker refuses them once it reloads the CRL: send it SIGHUP \
                         (`kill -HUP <pid>`) or restart it"
                    ),
                }
            }
        }
        CertsCommand::RenewCrl { dir, days } => {
            let now = time::OffsetDateTime::now_utc();
            Pki::open(&dir)?.write_crl(now, now + time::Duration::days(i64::from(days.max(1))))?;
            outln!("CRL renewed for {days} day(s)");
        }
    }
    Ok(())
}

/// The channel to the broker as the participant (or agent) of `args`.
async fn connect(args: &ClientArgs) -> anyhow::Result<tonic::transport::Channel> {
    Ok(broker::client::connect(&args.home.join("pki"), &args.as_participant, &args.addr).await?)
}

/// A broker's refusal as people read it: `<CODE>: <REASON>: <message>`.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let code = code_name(status.code());
    // The reason says more than the code, except where they are the same word
    // (INVALID_ARGUMENT): then it is said once.
    match broker::grpc::status::reason_of(&status) {
        Some(reason) if reason.as_str_name() != code => {
            anyhow::anyhow!("{code}: {}: {}", reason.as_str_name(), status.message())
        }
        _ => anyhow::anyhow!("{code}: {}", status.message()),
    }
}

/// The canonical gRPC name of a status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the federation declares, as `registry show --forms --types --purposes` lists it.
async fn registry_lists(args: &RegistryShowArgs) -> anyhow::Result<()> {
    let mut client = RegistryClient::new(connect(&args.client).await?);
    if args.purposes {
        let purposes = client
            .list_purposes(pb::ListPurposesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for p in &purposes.purposes {
            outln!("purpose {}: {} ({})", p.code, p.label, p.legal_reference);
        }
    }
    if args.types {
        let types = client
            .list_attestation_types(pb::ListAttestationTypesRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for t in &types.attestation_types {
            let claims: Vec<&str> = t.claims.iter().map(|c| c.name.as_str()).collect();
            outln!(
                "attestation type {} v{} from {} ({}): {}",
                t.id,
                t.version,
                t.provider,
                t.adapter,
                t.description
            );
            outln!("  claims: {}", claims.join(", "));
        }
    }
    if args.forms {
        let forms = client
            .list_forms(pb::ListFormsRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner();
        for f in &forms.forms {
            outln!("form {}: {} (purpose {})", f.id, f.label, f.purpose);
            for field in &f.fields {
                outln!(
                    "  {}{} <- {}.{}",
                    field.name,
                    if field.required { " (required)" } else { "" },
                    field.attestation_type,
                    field.claim
                );
            }
        }
    }
    Ok(())
}

async fn registry_show(args: RegistryShowArgs) -> anyhow::Result<()> {
    if args.forms || args.types || args.purposes {
        return registry_lists(&args).await;
    }
    let channel = connect(&args.client).await?;
    let mut client = RegistryClient::new(channel);
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    let habilitations = client
        .list_habilitations(pb::ListHabilitationsRequest {})
        .await
        .map_err(rpc_error)?
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
    outln!("{} ({}){agent}", me.participant, me.name);
    outln!("roles: {}", roles.join(", ").to_lowercase());
    outln!("registry: sha256 {}", me.registry_sha256);
    let own: Vec<_> = habilitations
        .habilitations
        .iter()
        .filter(|h| h.consumer == me.participant)
        .collect();
    if own.is_empty() {
        outln!("habilitations: none (deny by default: this participant may obtain nothing)");
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
        outln!("habilitation {}", h.id);
        outln!(
            "  may obtain {} [{}]",
            h.attestation_type,
            h.claims.join(", ")
        );
        outln!("  for {}", h.purposes.join(", "));
        outln!("  under {basis}, until {until} inclusive");
    }
    let others = habilitations.habilitations.len()
        - habilitations
            .habilitations
            .iter()
            .filter(|h| h.consumer == me.participant)
            .count();
    if others > 0 {
        outln!(
            "{others} habilitation(s) of other participants on its attestation types or in its audit scope"
        );
    }
    Ok(())
}

async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    // The verifier key comes from the PKI directory, distributed out of band, never from the
    // broker's answer: an attestation is only worth the key one already trusts.
    let key_path = args.client.home.join("pki").join("attestation.vkey");
    let vkey = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the attestation verifier key {} (the broker writes it at start; \
             distribute it out of band)",
            key_path.display()
        )
    })?;
    let vkey = vkey.trim();
    let channel = connect(&args.client).await?;
    let answer = ExchangeClient::new(channel)
        .fetch(pb::FetchRequest {
            subject: args.subject,
            attestation_type: args.attestation_type,
            purpose: args.purpose,
            claims: args.claims,
            request_id: args.request_id,
            mandate_id: args.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let envelope = answer
        .envelope
        .as_ref()
        .map(|e| broker::receipt::envelope_file(e).to_envelope())
        .ok_or_else(|| anyhow::anyhow!("the broker answered without a signed envelope"))?;
    broker::signing::verify(vkey, &envelope).with_context(|| {
        format!(
            "the attestation's signature does not verify against {}",
            key_path.display()
        )
    })?;
    // Saved before anything is printed: a closed standard output must not lose it.
    if let Some(out) = &args.out {
        write_json(out, &broker::receipt::receipt_file(&answer)?)?;
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&envelope.payload).context("the signed payload is not JSON")?;
    outln!("{}", serde_json::to_string_pretty(&payload)?);
    let keyid = broker::signing::keyid_of(vkey).unwrap_or_else(|| vkey.to_string());
    outln!("signature: valid ({keyid})");
    if let Some(out) = &args.out {
        outln!(
            "receipt saved in {} (check it offline: unefois verify {})",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, ending with a newline.
fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A C2SP verifier key file, trimmed.
fn read_vkey(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} verifier key {} (distribute it out of band)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

/// Checks a receipt or access history file offline, printing each check that passes; the
/// first that fails ends it with an error naming it.
fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use broker::receipt::{LaterCheckpoint, VerifiableFile, VerifierKeys};
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let file = VerifiableFile::parse(&bytes).with_context(|| args.file.display().to_string())?;
    let pki = args.home.join("pki");
    let attestation = if file.needs_attestation_key() {
        let path = args
            .attestation_key
            .unwrap_or_else(|| pki.join("attestation.vkey"));
        Some(read_vkey(&path, "attestation")?)
    } else {
        None
    };
    let log = read_vkey(&args.log_key.unwrap_or_else(|| pki.join("log.vkey")), "log")?;
    let later = match &args.checkpoint {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(LaterCheckpoint::parse(&text).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    let keys = VerifierKeys { attestation, log };
    let verification = broker::receipt::verify(&file, &keys, later.as_ref());
    for passed in &verification.passed {
        outln!("{passed}");
    }
    if let Some(failure) = verification.failure {
        return Err(failure.into());
    }
    outln!("{}: verified offline", args.file.display());
    Ok(())
}

/// Lists a person's accesses (every page), one line each; with --out, saves them with their
/// entries and proofs.
async fn accesses(args: AccessesArgs) -> anyhow::Result<()> {
    use broker::receipt::AccessesFile;
    let mut guichet =
        unefois_proto::v1::guichet_client::GuichetClient::new(connect(&args.client).await?);
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let answer = guichet
            .list_accesses(pb::ListAccessesRequest {
                subject: args.subject.clone(),
                id_token: args.evidence.id_token.clone(),
                mandate_id: args.evidence.mandate.clone(),
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        pages.push(broker::receipt::access_page(&answer));
        if answer.next_page_token.is_empty() {
            break;
        }
        if answer.next_page_token == page_token {
            bail!("the broker returned the same page token twice");
        }
        page_token = answer.next_page_token;
    }
    let file = AccessesFile::new(pages);
    if let Some(out) = &args.out {
        write_json(out, &file)?;
    }
    let mut count = 0usize;
    for access in file.pages.iter().flat_map(|p| &p.accesses) {
        count += 1;
        // To the second, as people read times; the file keeps the exact instant.
        let time = time::OffsetDateTime::parse(
            &access.time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_or_else(
            |_| access.time.clone(),
            unefois_tlog::entry::time_to_the_second,
        );
        outln!(
            "{time} {} {} {} {} (leaf {})",
            access.consumer,
            access.attestation_type,
            access.purpose,
            access.outcome,
            access.leaf_index
        );
    }
    if count == 0 {
        outln!("no access");
    }
    if let Some(out) = &args.out {
        outln!(
            "history saved in {} (check it offline: unefois verify {})",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// `ACTIVE`, `REVOKED`, `EXPIRED`.
fn status_name(c: &pb::Consent) -> &'static str {
    c.status()
        .as_str_name()
        .trim_start_matches("CONSENT_STATUS_")
}

fn expiry(c: &pb::Consent) -> Option<time::OffsetDateTime> {
    c.expires_at
        .as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
}

fn print_consent(c: &pb::Consent) -> anyhow::Result<()> {
    let until = match expiry(c) {
        Some(t) => t.format(&time::format_description::well_known::Rfc3339)?,
        None => "-".to_string(),
    };
    outln!("consent {} {}", c.id, status_name(c));
    outln!("  consumer: {}", c.consumer);
    outln!("  types:    {}", c.attestation_types.join(", "));
    outln!("  purpose:  {}", c.purpose);
    outln!("  expires:  {until}");
    Ok(())
}

async fn consent_grant(args: ConsentGrantArgs) -> anyhow::Result<()> {
    let channel = connect(&args.client).await?;
    let consent = ConsentsClient::new(channel)
        .grant(pb::GrantConsentRequest {
            subject: args.subject,
            consumer: args.consumer,
            attestation_types: args.attestation_types,
            purpose: args.purpose,
            valid_days: args.days,
            request_id: args.request_id,
            id_token: args.id_token,
            mandate_id: args.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let renewed = consent.renewed;
    let consent = consent
        .consent
        .ok_or_else(|| anyhow::anyhow!("the broker answered without the consent"))?;
    print_consent(&consent)?;
    if renewed {
        outln!("  renewed:  the consent already in force for this scope (one per scope)");
    }
    Ok(())
}

async fn consent_revoke(
    client: ClientArgs,
    consent_id: String,
    evidence: EvidenceArgs,
) -> anyhow::Result<()> {
    let channel = connect(&client).await?;
    let revoked = ConsentsClient::new(channel)
        .revoke(pb::RevokeConsentRequest {
            consent_id,
            id_token: evidence.id_token,
            mandate_id: evidence.mandate,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let ended = revoked.ended;
    let consent = revoked
        .consent
        .ok_or_else(|| anyhow::anyhow!("the broker answered without the consent"))?;
    outln!("consent {} {}", consent.id, status_name(&consent));
    match ended {
        0 => outln!("  ended: none (no consent of this scope was in force)"),
        n => outln!("  ended: {n} consent(s) in force of this scope"),
    }
    Ok(())
}

async fn consent_list(
    client: ClientArgs,
    subject: String,
    consumer: String,
    evidence: EvidenceArgs,
) -> anyhow::Result<()> {
    let channel = connect(&client).await?;
    let mut consents = ConsentsClient::new(channel);
    let mut page_token = String::new();
    let mut count = 0usize;
    loop {
        let page = consents
            .list(pb::ListConsentsRequest {
                subject: subject.clone(),
                consumer: consumer.clone(),
                page_token: page_token.clone(),
                id_token: evidence.id_token.clone(),
                mandate_id: evidence.mandate.clone(),
                ..Default::default()
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        for c in &page.consents {
            let until = expiry(c).map_or_else(|| "-".to_string(), |t| t.date().to_string());
            outln!(
                "{} {} {} {} {} until {until}",
                c.id,
                status_name(c),
                c.consumer,
                c.attestation_types.join(","),
                c.purpose
            );
        }
        count += page.consents.len();
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == page_token {
            bail!("the broker returned the same page token twice");
        }
        page_token = page.next_page_token;
    }
    if count == 0 {
        outln!("no consent");
    }
    Ok(())
}

async fn audit_verify(
    client: ClientArgs,
    trusted: Option<PathBuf>,
    log_key: Option<PathBuf>,
) -> anyhow::Result<()> {
    let key_path = log_key.unwrap_or_else(|| client.home.join("pki").join("log.vkey"));
    let vkey = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the log verifier key {} (distribute it out of band)",
            key_path.display()
        )
    })?;
    let trusted = trusted.unwrap_or_else(|| {
        client.home.join("audit").join(format!(
            "{}.checkpoint",
            client.as_participant.replace('/', "_")
        ))
    });
    if let Some(dir) = trusted.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let channel = connect(&client).await?;
    let verified = broker::auditor::verify_log(channel, vkey.trim(), &trusted)
        .await
        .map_err(|e| match e {
            broker::auditor::LogError::Rpc(status) => rpc_error(status),
            other => anyhow::anyhow!("{other}"),
        })?;
    match verified.previous_size {
        Some(previous) => outln!(
            "log verified: {} entries, consistent with the trusted checkpoint of {previous} entries",
            verified.checkpoint.size
        ),
        None => outln!(
            "log verified: {} entries (first run: checkpoint trusted from now on)",
            verified.checkpoint.size
        ),
    }
    outln!("root {}", hex::encode(verified.checkpoint.root));
    outln!("trusted checkpoint saved in {}", trusted.display());
    Ok(())
}

/// How often `audit tail --follow` asks for the latest checkpoint.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The latest checkpoint's tree size (a call any participant may make, not itself recorded).
async fn latest_size(audit: &mut AuditClient<tonic::transport::Channel>) -> anyhow::Result<u64> {
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .checkpoint;
    broker::receipt::checkpoint_size(&note).context("malformed checkpoint")
}

async fn audit_tail(client: ClientArgs, lines: u64, follow: bool) -> anyhow::Result<()> {
    let mut audit = AuditClient::new(connect(&client).await?);
    let size = latest_size(&mut audit).await?;
    let page = audit
        .list_events(pb::ListEventsRequest {
            start_index: size.saturating_sub(lines.min(1_000)),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    // Without --follow, the log as of its latest checkpoint; following, everything listed,
    // this read's own entry included, so that the next poll does not list it again.
    for e in page.events.iter().filter(|e| follow || e.index < size) {
        print_event(e)?;
    }
    if !follow {
        return Ok(());
    }
    let mut next = page.next_index;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let size = latest_size(&mut audit).await?;
        while next < size {
            let page = audit
                .list_events(pb::ListEventsRequest {
                    start_index: next,
                    limit: 1_000,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            for e in &page.events {
                print_event(e)?;
            }
            if page.next_index <= next {
                break;
            }
            next = page.next_index;
        }
    }
}

/// One line per event: index, RFC 3339 UTC time, kind, and what happened.
fn print_event(e: &pb::AuditEvent) -> anyhow::Result<()> {
    let time = e
        .time
        .as_ref()
        .map(|t| prost_types::Timestamp {
            seconds: t.seconds,
            nanos: 0,
        })
        .map(|t| broker::receipt::rfc3339(Some(&t)))
        .unwrap_or_default();
    let what = match e.kind.as_str() {
        "exchange" => format!(
            "{} {} {} for {}{}",
            e.outcome,
            e.attestation_type,
            e.participant,
            e.purpose,
            match pb::ErrorReason::try_from(e.reason) {
                Ok(r) if r != pb::ErrorReason::Unspecified => format!(" ({})", r.as_str_name()),
                _ => String::new(),
            }
        ),
        _ => e.participant.clone(),
    };
    outln!("{:>8} {time} {:<16} {what}", e.index, e.kind);
    Ok(())
}

/// Saves a signed checkpoint with the consistency proofs from the checkpoints of `for_file`.
async fn audit_checkpoint(
    client: ClientArgs,
    size: u64,
    for_file: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use broker::receipt::{
        Base64, CHECKPOINT_FORMAT, ConsistencyProof, LaterCheckpoint, VerifiableFile,
        checkpoint_size,
    };
    let earlier = match &for_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            VerifiableFile::parse(&bytes)
                .with_context(|| path.display().to_string())?
                .checkpoint_sizes()?
        }
        None => Vec::new(),
    };
    let mut audit = AuditClient::new(connect(&client).await?);
    let note = audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .checkpoint;
    let newer = checkpoint_size(&note).context("malformed checkpoint")?;
    let mut consistency = Vec::new();
    for first in earlier.into_iter().filter(|&s| s > 0 && s < newer) {
        let hashes = audit
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size: first,
                second_size: newer,
            })
            .await
            .map_err(rpc_error)?
            .into_inner()
            .hashes;
        consistency.push(ConsistencyProof {
            first_size: first,
            proof: hashes.into_iter().map(Base64).collect(),
        });
    }
    let proofs = consistency.len();
    let later = LaterCheckpoint {
        format: CHECKPOINT_FORMAT.to_string(),
        checkpoint: note,
        consistency,
    };
    match &out {
        Some(path) => {
            write_json(path, &later)?;
            outln!(
                "checkpoint of {newer} entries saved in {} with {proofs} consistency proof(s)",
                path.display()
            );
        }
        None => outln!("{}", serde_json::to_string_pretty(&later)?),
    }
    Ok(())
}

async fn audit_export(client: ClientArgs, format: &str, from: u64) -> anyhow::Result<()> {
    anyhow::ensure!(format == "jsonl", "unknown format {format:?}: only jsonl");
    let mut audit = AuditClient::new(connect(&client).await?);
    let mut stream = audit
        .export_events(pb::ListEventsRequest {
            start_index: from,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(event) = stream.message().await.map_err(rpc_error)? {
        // The entry is JSON already: written verbatim, so its exact bytes (and hash) survive.
        let entry = std::str::from_utf8(&event.entry).context("an entry is not UTF-8")?;
        writeln!(out, "{{\"index\":{},\"entry\":{entry}}}", event.index).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(())
}

async fn providers_status(client: ClientArgs) -> anyhow::Result<()> {
    let mut registry = RegistryClient::new(connect(&client).await?);
    let status = registry
        .get_providers_status(pb::GetProvidersStatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    outln!(
        "{:<34} {:<10} {:<7} {:<6} {:<10} {:>9} {:>8} {:>9}  rate limit",
        "attestation type",
        "provider",
        "adapter",
        "ready",
        "breaker",
        "in flight",
        "failures",
        "cool-down"
    );
    for p in status.providers {
        // Whole seconds left, rounded up: a cool-down of 0.2 s still reads "1s".
        let cool_down = match p.cool_down_ms {
            0 => "-".to_string(),
            ms => format!("{}s", ms.div_ceil(1000)),
        };
        let rate_limit = if p.rate_limit.is_empty() {
            "-"
        } else {
            p.rate_limit.as_str()
        };
        outln!(
            "{:<34} {:<10} {:<7} {:<6} {:<10} {:>5}/{:<3} {:>8} {:>9}  {}",
            p.attestation_type,
            p.provider,
            p.adapter,
            if p.ready { "yes" } else { "NO" },
            p.breaker,
            p.in_flight,
            p.max_concurrency,
            p.consecutive_failures,
            cool_down,
            rate_limit
        );
    }
    Ok(())
}

/// A word as a POSIX shell reads it back: as it is when it is plain, single-quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=@+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The `confirm` command of a preview, to run as it is printed: this program, the same caller,
/// home, address, person and mandate.
fn confirm_command(args: &PrefillArgs, prefill_id: &str) -> String {
    let program = std::env::args().next().unwrap_or_else(|| "unefois".into());
    let mut words = vec![
        shell_word(&program),
        "confirm".into(),
        "--as".into(),
        shell_word(&args.client.as_participant),
    ];
    if args.client.home != Path::new(DEFAULT_HOME) {
        words.extend([
            "--home".into(),
            shell_word(&args.client.home.to_string_lossy()),
        ]);
    }
    if args.client.addr != DEFAULT_ADDR {
        words.extend(["--addr".into(), shell_word(&args.client.addr)]);
    }
    words.extend(["--subject".into(), shell_word(&args.subject)]);
    if !args.mandate.is_empty() {
        words.extend(["--mandate".into(), shell_word(&args.mandate)]);
    }
    words.extend(["--prefill-id".into(), prefill_id.to_string()]);
    words.join(" ")
}

async fn prefill(args: PrefillArgs) -> anyhow::Result<()> {
    let mut guichet =
        unefois_proto::v1::guichet_client::GuichetClient::new(connect(&args.client).await?);
    let answer = guichet
        .prefill(pb::PrefillRequest {
            subject: args.subject.clone(),
            form: args.form.clone(),
            preview: args.preview,
            mandate_id: args.mandate.clone(),
            id_token: args.id_token.clone(),
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    outln!("form {}", answer.form);
    if !answer.prefill_id.is_empty() {
        let until = answer
            .preview_expires_at
            .as_ref()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        outln!(
            "preview {} (nothing issued until the person confirms, before {until}):",
            answer.prefill_id
        );
        outln!("  {}", confirm_command(&args, &answer.prefill_id));
        if args.mandate.is_empty() && std::env::var_os("UNEFOIS_ID_TOKEN").is_none() {
            outln!("  with the person's ID token: --id-token, or UNEFOIS_ID_TOKEN");
        }
        outln!("  (add --reject if the person rejects it)");
    }
    print_fields(&answer.fields, &answer.unavailable)
}

async fn confirm(args: ConfirmArgs) -> anyhow::Result<()> {
    let mut guichet =
        unefois_proto::v1::guichet_client::GuichetClient::new(connect(&args.client).await?);
    let answer = guichet
        .confirm(pb::ConfirmRequest {
            subject: args.subject,
            prefill_id: args.prefill_id.clone(),
            reject: args.reject,
            attestation_types: args.attestation_types,
            mandate_id: args.mandate,
            id_token: args.id_token,
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.reject {
        outln!("preview {} rejected: nothing released", args.prefill_id);
        return Ok(());
    }
    outln!(
        "preview {} confirmed: {} attestation(s) issued",
        args.prefill_id,
        answer.attestations.len()
    );
    print_fields(&answer.fields, &answer.unavailable)
}

/// One line per field: its value and source, or the reason to ask the person for it.
fn print_fields(
    fields: &[pb::PrefilledField],
    unavailable: &[pb::FieldError],
) -> anyhow::Result<()> {
    for f in fields {
        let value = match f.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(pb::claim_value::Value::StringValue(s)) => s.clone(),
            Some(pb::claim_value::Value::IntegerValue(i)) => i.to_string(),
            Some(pb::claim_value::Value::NumberValue(n)) => n.to_string(),
            Some(pb::claim_value::Value::BooleanValue(b)) => b.to_string(),
            Some(pb::claim_value::Value::DateValue(d)) => d.clone(),
            None => String::new(),
        };
        let attestation = if f.attestation_id.is_empty() {
            "preview, not issued".to_string()
        } else {
            format!("attestation {}", f.attestation_id)
        };
        outln!(
            "  {:<28} {:<16} from {} ({}, {attestation})",
            f.name,
            value,
            f.provider,
            f.attestation_type
        );
    }
    for m in unavailable {
        let reason = pb::ErrorReason::try_from(m.reason)
            .map(|r| r.as_str_name())
            .unwrap_or("UNSPECIFIED");
        outln!("  {:<28} to ask: {reason} ({})", m.name, m.message);
    }
    Ok(())
}

async fn mandate(command: MandateCommand) -> anyhow::Result<()> {
    use unefois_proto::v1::mandates_client::MandatesClient;
    match command {
        MandateCommand::Create {
            client,
            subject,
            purposes,
            days,
            document,
            id_token,
            request_id,
        } => {
            let bytes = std::fs::read(&document)
                .with_context(|| format!("cannot read {}", document.display()))?;
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes).to_vec();
            let created = MandatesClient::new(connect(&client).await?)
                .create(pb::CreateMandateRequest {
                    subject,
                    purposes,
                    duration_days: days,
                    document_sha256: digest,
                    id_token,
                    request_id,
                    ..Default::default()
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .mandate
                .ok_or_else(|| anyhow::anyhow!("the broker answered without the mandate"))?;
            print_mandate(&created)?;
        }
        MandateCommand::Revoke {
            client,
            mandate_id,
            id_token,
        } => {
            let revoked = MandatesClient::new(connect(&client).await?)
                .revoke(pb::RevokeMandateRequest {
                    mandate_id,
                    id_token,
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .mandate
                .ok_or_else(|| anyhow::anyhow!("the broker answered without the mandate"))?;
            print_mandate(&revoked)?;
        }
        MandateCommand::List {
            client,
            subject,
            id_token,
        } => {
            let mut mandates = MandatesClient::new(connect(&client).await?);
            let mut page_token = String::new();
            let mut count = 0usize;
            loop {
                let page = mandates
                    .list(pb::ListMandatesRequest {
                        subject: subject.clone(),
                        id_token: id_token.clone(),
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                for m in &page.mandates {
                    outln!(
                        "{} {} {} agent {} for {} until {}",
                        m.id,
                        mandate_status(m),
                        m.structure,
                        m.agent,
                        m.purposes.join(","),
                        date_of(m.expires_at.as_ref())
                    );
                }
                count += page.mandates.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if count == 0 {
                outln!("no mandate");
            }
        }
    }
    Ok(())
}

fn mandate_status(m: &pb::Mandate) -> &'static str {
    m.status()
        .as_str_name()
        .trim_start_matches("MANDATE_STATUS_")
}

fn date_of(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map_or_else(|| "-".to_string(), |t| t.date().to_string())
}

fn print_mandate(m: &pb::Mandate) -> anyhow::Result<()> {
    outln!("mandate {} {}", m.id, mandate_status(m));
    outln!("  structure: {} (agent {})", m.structure, m.agent);
    outln!("  purposes:  {}", m.purposes.join(", "));
    outln!("  days:      {}", m.duration_days);
    outln!("  expires:   {}", date_of(m.expires_at.as_ref()));
    outln!("  document:  sha256 {}", hex::encode(&m.document_sha256));
    Ok(())
}

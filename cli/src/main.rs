//! `unefois`: the broker (`serve`), the federation PKI (`certs`) and participant commands.
//! This crate only parses flags and calls into the library: the command line and its dispatch
//! here, one module per subcommand (or family of subcommands).

#![forbid(unsafe_code)]

// First: its `outln!` serves every module below.
#[macro_use]
mod print;

mod accesses;
mod audit;
mod backup;
mod certs;
mod client;
mod consent;
mod dev;
mod fetch;
mod mandate;
mod prefill;
mod providers;
mod registry;
mod serve;
mod store;
mod verify;

use std::io::Write;

use clap::{Parser, Subcommand};

use crate::print::StdoutClosed;

/// mimalloc instead of glibc's malloc: a fetch makes about 240 allocations, and glibc spent
/// about 12 % of the broker's user-space instructions on them (0.91 × the instructions per fetch,
/// 0.93 × the CPU; BENCHMARKS.md, run J). Built without transparent huge pages (`no_thp`): with
/// them, the peak RSS tripled for the same work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(serve::ServeArgs),
    /// Manage the federation PKI.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Read the registry as a participant sees it.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Fetch a signed attestation and check its signature against HOME/pki/attestation.vkey.
    Fetch(fetch::FetchArgs),
    /// Check a receipt or access history file offline, without the broker: signatures,
    /// inclusion proofs, payload hash, and consistency with a later checkpoint.
    Verify(verify::VerifyArgs),
    /// A person's access history at a guichet (their ID token, or a mandate), each access with
    /// its audit entry and inclusion proof.
    Accesses(accesses::AccessesArgs),
    /// Grant, revoke and list the consents of a person.
    #[command(subcommand)]
    Consent(consent::ConsentCommand),
    /// Verify, follow and export the audit log (auditors).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Pre-fill a form for a person at a guichet: each field with its source or its reason.
    Prefill(prefill::PrefillArgs),
    /// Confirm (or reject) a preview the person checked: the kept values become attestations.
    Confirm(prefill::ConfirmArgs),
    /// Create, revoke and list the mandates people give mediation structures.
    #[command(subcommand)]
    Mandate(mandate::MandateCommand),
    /// Providers' readiness, circuit breakers and load (operators).
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Development helpers (never for production).
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Back up what cannot be rebuilt, the journal and the keys of HOME/data, safely while the
    /// broker runs. The backup holds the broker's SECRET KEYS (files 0600): store it like them.
    Backup(backup::BackupArgs),
    /// Restore a backup into HOME/data, the broker stopped: verifies it whole, refuses to put the
    /// log behind a checkpoint already handed out (unless --force); the state is rebuilt at start.
    Restore(backup::RestoreArgs),
    /// The PostgreSQL store of a cluster of brokers: create its schema, import an embedded log.
    #[command(subcommand)]
    Store(store::StoreCommand),
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
        Command::Serve(args) => serve::serve(args).await,
        Command::Certs(cmd) => certs::certs(cmd),
        Command::Registry(cmd) => registry::registry(cmd).await,
        Command::Fetch(args) => fetch::fetch(args).await,
        Command::Consent(cmd) => consent::consent(cmd).await,
        Command::Audit(cmd) => audit::audit(cmd).await,
        Command::Verify(args) => verify::verify(args),
        Command::Accesses(args) => accesses::accesses(args).await,
        Command::Providers(cmd) => providers::providers(cmd).await,
        Command::Prefill(args) => prefill::prefill(args).await,
        Command::Confirm(args) => prefill::confirm(args).await,
        Command::Mandate(cmd) => mandate::mandate(cmd).await,
        Command::Dev(cmd) => dev::dev(cmd),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Store(cmd) => store::store(cmd).await,
    }
}

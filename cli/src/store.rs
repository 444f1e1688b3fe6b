//! `unefois store`: the PostgreSQL store of a cluster: its schema (`init`), and an embedded
//! broker's log moved into it (`import`).

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::client::DEFAULT_HOME;

#[derive(clap::Subcommand)]
pub(crate) enum StoreCommand {
    /// Create or migrate the schema (versioned migrations; safe to run again, from any broker).
    Init {
        /// The database: `postgresql://USER@HOST[,HOST…]/DB[?target_session_attrs=read-write]`
        /// (or `UNEFOIS_STORE` in the environment, for a URL with a password).
        #[arg(
            long,
            value_name = "URL",
            env = "UNEFOIS_STORE",
            hide_env_values = true
        )]
        store: String,
        /// Also apply the migrations that drop what earlier versions of the broker still use
        /// (docs/cluster.md, "Rolling upgrades"): only once every broker runs this version. A
        /// new schema gets them without it.
        #[arg(long)]
        contract: bool,
    },
    /// Move an embedded broker's log and state (HOME/data, the broker stopped) into an empty
    /// PostgreSQL store: the same entries, leaf indices, roots and checkpoints.
    Import {
        /// The embedded broker's home.
        #[arg(long, default_value = DEFAULT_HOME)]
        home: PathBuf,
        /// The database (its schema made by `unefois store init`; or `UNEFOIS_STORE` in the
        /// environment).
        #[arg(
            long,
            value_name = "URL",
            env = "UNEFOIS_STORE",
            hide_env_values = true
        )]
        store: String,
        /// The registry the broker ran with (its trust domain names the log in checkpoints).
        #[arg(long, default_value = "examples/registry.toml")]
        registry: PathBuf,
    },
}

pub(crate) async fn store(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Init { store, contract } => {
            let applied = broker::store::postgres::init(&store, contract).await?;
            match applied.as_slice() {
                [] => outln!("The schema is up to date."),
                versions => outln!("Applied schema migrations {versions:?}."),
            }
            Ok(())
        }
        StoreCommand::Import {
            home,
            store,
            registry,
        } => import(home, &store, registry).await,
    }
}

async fn import(home: PathBuf, url: &str, registry: PathBuf) -> anyhow::Result<()> {
    let data = home.join("data");
    if !data.join("keys").is_dir() {
        bail!(
            "{} has no keys: not an embedded broker's data",
            data.display()
        );
    }
    // The broker must be stopped: a log still growing would be copied in part.
    broker::data_dir_holder(&data)
        .with_context(|| format!("{} is in use: stop its broker first", data.display()))?;
    let registry_path = registry;
    let registry = broker::registry::load(&registry_path)?;
    let keys = broker::keys::Keys::load(&data, false)?;
    let sealer = std::sync::Arc::new(keys.sealer()?);
    let source = broker::store::Embedded::open(
        &data,
        broker::journal::JournalOptions::default(),
        broker::LogSigner::new(&keys, registry.trust_domain())?,
        sealer.clone(),
    )?;
    // Opening the log signed its head again, under the trust domain of `--registry`: the
    // checkpoint the broker handed out last must verify under that name too, or the copy
    // would be a log under another name than the one its auditors and receipts know.
    let signer = broker::LogSigner::new(&keys, registry.trust_domain())?;
    if let Some((_, note)) = source.checkpoint_found()
        && unefois_tlog::verify_checkpoint(signer.vkey(), note).is_err()
    {
        let named = note.lines().next().unwrap_or_default().to_string();
        source.close().await;
        bail!(
            "the broker signed its log as {named:?}, and {} names it {:?}: give the registry \
             the broker ran with (--registry)",
            registry_path.display(),
            unefois_tlog::checkpoint::origin(registry.trust_domain())
        );
    }
    let target = broker::store::Postgres::open(
        url,
        signer,
        sealer,
        broker::store::postgres::DEFAULT_APPEND_TIMEOUT,
    )
    .await?;
    // The copy is checked against the source's checkpoint before the database is marked
    // finished; an import cut short is finished by running it again.
    let copied = target.import(&source).await;
    use broker::store::Store;
    let checkpoint = target.latest_checkpoint().await;
    target.close().await;
    source.close().await;
    let copied = copied?;
    let (size, checkpoint) = checkpoint?.unwrap_or_default();
    outln!(
        "Imported {copied} entries into {} ({size} in all).",
        target.location()
    );
    outln!("Checkpoint (the same as the embedded broker's):\n{checkpoint}");
    Ok(())
}

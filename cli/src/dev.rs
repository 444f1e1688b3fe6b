//! `unefois dev`: development helpers (never for production).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum DevCommand {
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

/// Runs a development helper.
pub(crate) fn dev(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::IdToken {
            subject,
            aud,
            key,
            ttl,
        } => {
            let bytes =
                std::fs::read(&key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let key = broker::idp::dev::DevKey::parse(&key, &bytes)?;
            let claims = broker::idp::dev::claims_lasting(
                &subject,
                &aud,
                time::OffsetDateTime::now_utc(),
                ttl,
            )?;
            outln!("{}", key.sign(&claims)?);
            Ok(())
        }
    }
}

//! What every participant command shares: the flags that say who calls which broker, the mTLS
//! channel, and the broker's refusals as people read them.

use std::path::PathBuf;

/// The broker's home when none is given: the development setup of `cargo run -- serve`.
pub(crate) const DEFAULT_HOME: &str = ".unefois-dev";
/// The broker's address when none is given.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:50051";

#[derive(clap::Args)]
pub(crate) struct ClientArgs {
    /// Where the PKI is (HOME/pki).
    #[arg(long, default_value = DEFAULT_HOME)]
    pub(crate) home: PathBuf,
    /// The broker's address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub(crate) addr: String,
    /// The participant (or `structure/agent`) to act as.
    #[arg(long = "as")]
    pub(crate) as_participant: String,
}

/// The person's own evidence, or the mandate an agent acts under.
#[derive(clap::Args)]
pub(crate) struct EvidenceArgs {
    /// The citizen's OIDC ID token, the identity evidence (development:
    /// `unefois dev id-token --subject ... --aud ...`); not needed under a mandate.
    #[arg(
        long,
        env = "UNEFOIS_ID_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub(crate) id_token: String,
    /// The mandate an agent of a mediation structure acts under.
    #[arg(long, default_value = "")]
    pub(crate) mandate: String,
}

/// The channel to the broker as the participant (or agent) of `args`.
pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<tonic::transport::Channel> {
    Ok(broker::client::connect(&args.home.join("pki"), &args.as_participant, &args.addr).await?)
}

/// A broker's refusal as people read it: `<CODE>: <REASON>: <message>`.
pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let code = code_name(status.code());
    // The reason says more than the code, except where they are the same word
    // (INVALID_ARGUMENT): then it is said once.
    match broker::client::reason_of(&status) {
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

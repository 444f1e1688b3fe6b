//! `unefois providers status`: providers' readiness, circuit breakers and load (operators).

use clap::Subcommand;
use unefois_proto::v1 as pb;
use unefois_proto::v1::registry_client::RegistryClient;

use crate::client::{ClientArgs, connect, rpc_error};

#[derive(Subcommand)]
pub(crate) enum ProvidersCommand {
    /// One line per attestation type: adapter, breaker, calls in flight.
    Status(ClientArgs),
}

/// Runs a `providers` subcommand.
pub(crate) async fn providers(command: ProvidersCommand) -> anyhow::Result<()> {
    match command {
        ProvidersCommand::Status(client) => providers_status(client).await,
    }
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

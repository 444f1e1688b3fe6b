//! `unefois-bench`: load generator and baselines for Une Fois (see BENCHMARKS.md and
//! bench/compare.sh).
//!
//! The broker under test is the real `unefois` binary in its own process; this tool only
//! speaks gRPC to it over mTLS, as a participant would. Beside it, an echo server (the floor
//! cost of any gRPC service here) and a fast Rust provider for the `grpc` adapter.

mod echo;
mod load;
mod provider;
mod report;
mod scenario;
mod setup;
mod tls;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::scenario::{Scenario, Workload, WorkloadOptions};
use crate::setup::IdTokens;

/// Load generator and baselines for the Une Fois broker.
#[derive(Parser)]
#[command(name = "unefois-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a server with one scenario and report throughput, latency and server cost.
    Run(RunArgs),
    /// Serve a fixed Provider.Provide answer over the broker's mTLS setup (the floor).
    Echo {
        /// Address to listen on (port 0: any free port, printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// PKI directory (its broker.crt is the server certificate).
        #[arg(long, default_value = "target/bench-env/home/pki")]
        pki: PathBuf,
    },
    /// Serve the sample datasets as a unefois.v1.Provider over mTLS.
    Provider(ProviderArgs),
    /// Write the bench folder: PKI, bench registry pointing at the provider, dev-idp keys.
    Env {
        /// The bench folder.
        #[arg(long, default_value = "target/bench-env")]
        dir: PathBuf,
        /// The provider's address, host:port (as the broker will reach it).
        #[arg(long)]
        provider: String,
        /// The registry template (PROVIDER_ADDR is replaced).
        #[arg(long, default_value = "bench/registry.toml")]
        registry_template: PathBuf,
        /// The repository root (for examples/dev-idp).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Grant the citizens' consents the scenarios need, through the running broker.
    Seed {
        /// The broker's address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// PKI directory.
        #[arg(long, default_value = "target/bench-env/home/pki")]
        pki: PathBuf,
        #[command(flatten)]
        tokens: TokenArgs,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// The `unefois` binary (it mints the development ID tokens).
    #[arg(long, default_value = "target/release/unefois")]
    broker_bin: PathBuf,
    /// The development identity provider's key.
    #[arg(long, default_value = "examples/dev-idp/dev-signing-key.json")]
    idp_key: PathBuf,
}

impl TokenArgs {
    fn id_tokens(&self) -> IdTokens {
        IdTokens {
            broker_bin: self.broker_bin.clone(),
            key: self.idp_key.clone(),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// What to send.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// The server, host:port; several (comma-separated or repeated): the connections go to
    /// each in turn (brokers of one cluster).
    #[arg(long, default_value = "127.0.0.1:50051", value_delimiter = ',')]
    target: Vec<String>,
    /// HTTP/2 connections (each its own TCP and TLS connection; at least one per target).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight, in total, spread over the connections.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of the same load before the measure starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// At most this many requests in the measured time.
    #[arg(long)]
    requests: Option<u64>,
    /// Pace the requests at this total rate (requests/s); latency counts from when each was due.
    #[arg(long)]
    rate: Option<f64>,
    /// Server processes whose CPU time and peak RSS to measure (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Other processes of the bench (the provider behind the broker), measured apart from the
    /// server and from the machine's other load (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    aux_pid: Vec<u32>,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// PKI directory holding the client certificate and the CA.
    #[arg(long, default_value = "target/bench-env/home/pki")]
    pki: PathBuf,
    /// The client certificate to present (default: the scenario's).
    #[arg(long = "as")]
    identity: Option<String>,
    /// Attestation type asked for (default: the scenario's).
    #[arg(long = "type")]
    attestation_type: Option<String>,
    /// Subjects to cycle over (default: the scenario's sample people).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Claims asked for (provider-direct and echo only).
    #[arg(long, value_delimiter = ',')]
    claims: Vec<String>,
    #[command(flatten)]
    tokens: TokenArgs,
}

#[derive(Args)]
struct ProviderArgs {
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// PKI directory (its broker.crt is the server certificate).
    #[arg(long, default_value = "target/bench-env/home/pki")]
    pki: PathBuf,
    /// Folder of <attestation-type>.json datasets.
    #[arg(long, default_value = "examples/data")]
    data: PathBuf,
    /// Claims sent as date_value.
    #[arg(long, value_delimiter = ',', default_value = "allocataire_depuis")]
    date_claims: Vec<String>,
    /// Added latency for a type, TYPE=MILLISECONDS (repeatable).
    #[arg(long)]
    delay: Vec<String>,
    /// Apply the delays to this subject only.
    #[arg(long)]
    delay_subject: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Echo { listen, pki } => echo::serve(listen, &pki).await,
        Command::Provider(args) => {
            let dates: HashSet<String> = args.date_claims.into_iter().collect();
            let datasets = provider::Datasets::load(&args.data, &dates)?
                .with_delays(parse_delays(&args.delay)?, args.delay_subject);
            provider::serve(args.listen, &args.pki, datasets).await
        }
        Command::Env {
            dir,
            provider,
            registry_template,
            repo,
        } => {
            let registry = setup::write_env(&dir, &repo, &registry_template, &provider)?;
            println!("bench registry: {}", registry.display());
            println!("broker home:    {}", dir.join("home").display());
            Ok(())
        }
        Command::Seed {
            target,
            pki,
            tokens,
        } => {
            let channel = tls::client_endpoint(&pki, setup::GUICHET, &target)?
                .connect()
                .await
                .with_context(|| format!("connecting to {target}"))?;
            let granted = setup::seed_consents(channel, &tokens.id_tokens()).await?;
            println!("{granted} consents granted");
            Ok(())
        }
    }
}

/// `TYPE=MS` pairs.
fn parse_delays(specs: &[String]) -> anyhow::Result<HashMap<String, Duration>> {
    specs
        .iter()
        .map(|spec| {
            let Some((ty, ms)) = spec.split_once('=') else {
                bail!("--delay {spec:?}: expected TYPE=MILLISECONDS");
            };
            let ms: u64 = ms
                .parse()
                .with_context(|| format!("--delay {spec:?}: not a number of milliseconds"))?;
            Ok((ty.to_string(), Duration::from_millis(ms)))
        })
        .collect()
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be a number of seconds");
    }
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| args.scenario.identity().to_string());
    let connections = args.connections.max(args.target.len());
    let mut channels = Vec::with_capacity(connections);
    for i in 0..connections {
        let target = &args.target[i % args.target.len()];
        let endpoint = tls::client_endpoint(&args.pki, &identity, target)?;
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {target}"))?,
        );
    }
    let workload = Workload::prepare(
        args.scenario,
        &WorkloadOptions {
            attestation_type: args.attestation_type.clone(),
            subjects: args.subjects.clone(),
            claims: args.claims.clone(),
            id_tokens: Some(args.tokens.id_tokens()),
        },
        &channels[0],
    )
    .await?;
    let options = load::LoadOptions {
        scenario: args.scenario.name().to_string(),
        target: args.target.join(","),
        in_flight: args.in_flight,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        max_requests: args.requests,
        rate: args.rate,
        server_pids: args.server_pid.iter().map(u32::to_string).collect(),
        aux_pids: args.aux_pid.iter().map(u32::to_string).collect(),
    };
    let report = load::run(channels, workload, &options).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

//! `unefois certs`: the federation PKI (CA, participants' and agents' certificates, CRL).

use std::path::PathBuf;

use clap::Subcommand;
use unefois_certs::{Pki, Validity};

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
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

pub(crate) fn certs(cmd: CertsCommand) -> anyhow::Result<()> {
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
                    .map(|home| home.join("data").join(broker::DATA_LOCK_FILE))
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

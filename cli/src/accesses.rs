//! `unefois accesses`: a person's access history at a guichet, each access with its entry and
//! proof.

use std::path::PathBuf;

use anyhow::bail;
use unefois_proto::v1 as pb;

use crate::client::{ClientArgs, EvidenceArgs, connect, rpc_error};
use crate::print::write_json;

#[derive(clap::Args)]
pub(crate) struct AccessesArgs {
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

/// Lists a person's accesses (every page), one line each; with --out, saves them with their
/// entries and proofs.
pub(crate) async fn accesses(args: AccessesArgs) -> anyhow::Result<()> {
    use broker::receipt::AccessesFile;
    let channel = connect(&args.client).await?;
    let mut guichet = unefois_proto::v1::guichet_client::GuichetClient::new(channel.clone());
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
    let mut file = AccessesFile::new(pages);
    if let Some(out) = &args.out {
        // Each page's read is recorded before it is read: the pages' checkpoints differ, and
        // the proofs from the smaller ones to the largest show they are of one log.
        // The pages were read (and their reads recorded): a proof the broker cannot give now
        // does not lose them; the file is saved without, and says how to get them later.
        if let Some((smaller, largest)) = file.to_prove_one_log() {
            let mut audit = unefois_proto::v1::audit_client::AuditClient::new(channel);
            match crate::audit::later_checkpoint(&mut audit, largest, &smaller).await {
                Ok(later) => file.one_log = Some(later),
                Err(e) => {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: the proofs that the pages are of one log could not be \
                         fetched ({e:#}): once the broker answers, run unefois audit checkpoint \
                         --for {} --out LATER, then unefois verify {} --checkpoint LATER",
                        out.display(),
                        out.display()
                    );
                }
            }
        }
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
        let out = out.display();
        outln!("history saved in {out} (check it offline: unefois verify {out})");
    }
    Ok(())
}

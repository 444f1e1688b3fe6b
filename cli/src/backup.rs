//! `unefois backup` and `unefois restore`: the journal and the keys of HOME/data, verified
//! whole on the way back.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::client::DEFAULT_HOME;

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// The broker's home; its data directory HOME/data is backed up.
    #[arg(long, default_value = DEFAULT_HOME)]
    home: PathBuf,
    /// The backup directory to create (it must not exist). It holds secret keys.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
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

pub(crate) fn backup(args: BackupArgs) -> anyhow::Result<()> {
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

pub(crate) fn restore(args: RestoreArgs) -> anyhow::Result<()> {
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

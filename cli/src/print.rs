//! What every command writes: lines on standard output that end a command quietly when its
//! reader goes away, and JSON files.

use std::path::Path;

use anyhow::Context;

/// Standard output was closed by its reader (`unefois audit export | head -1`): the command
/// ends quietly with exit 0, as Unix tools do. `println!` would panic there (exit 101), so
/// everything goes through [`outln!`]. Restoring SIGPIPE's default action instead would need
/// `unsafe` and end the process by a signal (status 141 under `pipefail`), not with 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub(crate) struct StdoutClosed;

/// An error writing to standard output: [`StdoutClosed`] for a closed pipe.
pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// `println!` that returns the write's error (a closed pipe as [`StdoutClosed`]) instead of
/// panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::print::stdout_error)?
    }};
}

/// Writes `value` as pretty JSON to `path`, ending with a newline, readable by the user alone
/// (0600): a receipt holds the claim values released, an access history a person's exchanges,
/// and the command runs under the user's umask (often 022). A regular file (or none yet) is
/// written beside the path, synced, and renamed over it, so that one there before is replaced
/// whole, never left half written nor readable through an earlier mode; a link or what is not
/// a regular file (`/dev/stdout`, `/dev/null`, a link to a file) is written through, as it is.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    let cannot = || format!("cannot write {}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => return std::fs::write(path, text).with_context(cannot),
        _ => {}
    }
    let name = path.file_name().with_context(cannot)?;
    let mut partial = name.to_os_string();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = path.with_file_name(partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(cannot)?;
    let written = file
        .write_all(&text)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        // Only what this run created.
        let _ = std::fs::remove_file(&partial);
    }
    written.with_context(cannot)
}

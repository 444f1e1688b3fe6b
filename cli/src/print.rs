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
/// (0600, an existing file narrowed too): a receipt holds the claim values released, an access
/// history a person's exchanges, and the command runs under the user's umask (often 022).
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(&text)
    })();
    written.with_context(|| format!("cannot write {}", path.display()))
}

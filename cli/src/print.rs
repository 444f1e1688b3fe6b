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

/// Writes `value` as pretty JSON to `path`, ending with a newline.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

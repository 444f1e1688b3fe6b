//! What only the broker's user may read: the data directory and everything in it (journal
//! segments, derived state, keys) are created 0700 (folders) and 0600 (files), and narrowed to
//! those modes when an earlier version left them open. The binary also sets its umask to 077,
//! for files that libraries create (sled's); in-process brokers rely on [`narrow_tree`].

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the broker's folders.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the broker's files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with [`DIR_MODE`], and narrows `dir` to it if it exists
/// with another mode.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    narrow(dir, DIR_MODE)
}

/// Sets `path`'s permission bits to `mode` unless they already are.
pub fn narrow(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Narrows `dir` and everything below it: folders to [`DIR_MODE`], files to [`FILE_MODE`].
/// Symbolic links are left alone (never followed).
pub fn narrow_tree(dir: &Path) -> std::io::Result<()> {
    narrow(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            narrow_tree(&entry.path())?;
        } else if kind.is_file() {
            narrow(&entry.path(), FILE_MODE)?;
        }
    }
    Ok(())
}

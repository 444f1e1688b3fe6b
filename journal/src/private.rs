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

/// Creates `dir` (and missing parents) with [`DIR_MODE`], syncing the parent of each folder it
/// creates, and narrows `dir` to it if it exists with another mode.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    create_synced(dir)?;
    narrow(dir, DIR_MODE)
}

/// Creates `dir` and its missing parents, outermost first: a new folder's entry may not survive
/// a power loss until its parent is synced, and with it would go everything written below.
fn create_synced(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_synced(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        // Created by someone else meanwhile: theirs to sync.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    crate::format::sync_dir(parent.unwrap_or(Path::new(".")))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_parents_are_created_private_and_an_open_folder_is_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b").join("c");
        private_dir(&dir).unwrap();
        for made in [root.path().join("a"), root.path().join("a/b"), dir.clone()] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, DIR_MODE, "{}", made.display());
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        // A file in the way is an error, as it was.
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(private_dir(&file.join("below")).is_err());
        assert!(private_dir(&file).is_err());
    }
}

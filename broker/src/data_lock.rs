//! One broker per data directory: an exclusive lock on `DATA/broker.lock`, held for the
//! broker's life, with its process id written in it so that a second start can say who holds
//! the directory (instead of a storage engine's raw lock error, after it already said it was
//! listening).

use std::fs::{File, OpenOptions};

use rustix::fs::{FlockOperation, flock};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "broker.lock";

/// Why the data directory cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataLockError {
    /// Another process holds it.
    #[error("another broker is using {} (pid {})", path.display(), pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// The holder's process id, when it could be read.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The data directory, held: released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

fn open(data_dir: &Path) -> Result<(File, PathBuf), DataLockError> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::private::FILE_MODE)
        .open(&path)
        .map_err(|source| DataLockError::Io {
            path: path.clone(),
            source,
        })?;
    Ok((file, path))
}

fn in_use(data_dir: &Path, file: &mut File) -> DataLockError {
    let mut text = String::new();
    let pid = file
        .read_to_string(&mut text)
        .ok()
        .and_then(|_| text.trim().parse().ok());
    DataLockError::InUse {
        path: data_dir.to_path_buf(),
        pid,
    }
}

/// Takes the data directory (which must exist) for this process, or says who holds it.
pub fn acquire(data_dir: &Path) -> Result<DataLock, DataLockError> {
    let (mut file, path) = open(data_dir)?;
    // flock(2): held by the open file, so released however the process ends.
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(in_use(data_dir, &mut file)),
        Err(e) => {
            return Err(DataLockError::Io {
                path,
                source: e.into(),
            });
        }
    }
    let io = |source| DataLockError::Io {
        path: path.clone(),
        source,
    };
    // A lock file left wider by an operator is narrowed like the rest of the directory.
    crate::private::narrow(&path, crate::private::FILE_MODE).map_err(io)?;
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataLock { _file: file })
}

/// Says who holds the data directory, if another process does, without taking it: what a
/// command checks before it says anything. A directory (or lock file) that does not exist is
/// held by nobody.
pub fn holder(data_dir: &Path) -> Result<(), DataLockError> {
    if !data_dir.join(LOCK_FILE).is_file() {
        return Ok(());
    }
    let (mut file, path) = open(data_dir)?;
    match flock(&file, FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(in_use(data_dir, &mut file)),
        Err(e) => Err(DataLockError::Io {
            path,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        holder(dir.path()).unwrap();
        let held = acquire(dir.path()).unwrap();
        let again = acquire(dir.path()).unwrap_err();
        let expected = format!(
            "another broker is using {} (pid {})",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(again.to_string(), expected);
        assert_eq!(holder(dir.path()).unwrap_err().to_string(), expected);
        drop(held);
        holder(dir.path()).unwrap();
        acquire(dir.path()).unwrap();
    }
}

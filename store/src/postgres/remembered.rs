//! The newest checkpoint a broker knew on a standby, kept in its data folder
//! (`data/log-checkpoint`), so that a restarted broker still knows what the log held: it
//! refuses to start on a database whose log went back from it, or was rolled back and then
//! written again past it (by another broker that knew nothing), as a running broker refuses to
//! extend such a log (`vouched`). Written once a second at most (and at close), synced: a
//! crash forgets at most the last second's heads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::confirmed::Confirmed;
use crate::StoreError;

/// The file's name in the broker's data folder.
pub const FILE: &str = "log-checkpoint";
/// How often the newest known checkpoint is written, at most.
const EVERY: Duration = Duration::from_secs(1);

/// Where a broker keeps the newest checkpoint it knew.
#[derive(Clone)]
pub struct Remembered {
    path: PathBuf,
    /// The size of the checkpoint last written (or read at start), and whether the last write
    /// failed; held while writing, so that the periodic write and the last one at close never
    /// write the file together.
    written: Arc<Mutex<(u64, bool)>>,
}

impl Remembered {
    /// The file in the data folder `data`.
    pub fn in_data_dir(data: &Path) -> Remembered {
        Remembered {
            path: data.join(FILE),
            written: Arc::new(Mutex::new((0, false))),
        }
    }

    /// The file, as an operator may be told of it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last write of the file failed (shown on `/readyz`).
    pub fn failing(&self) -> bool {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The checkpoint kept, if any.
    pub fn read(&self) -> Result<Option<String>, StoreError> {
        match std::fs::read_to_string(&self.path) {
            Ok(note) => Ok(Some(note)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Database(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// Keeps `note` in place of the file's, synced (written aside, then renamed).
    fn write(&self, note: &str) -> std::io::Result<()> {
        let aside = self.path.with_extension("new");
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(note.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&aside, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Writes the newest checkpoint this broker vouches for, if newer than the one written (or
    /// read at start: `from`, the first time). A failure is logged when it starts and when it
    /// ends, not each second.
    pub fn keep_newest(&self, confirmed: &Confirmed, from: u64) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.0 = written.0.max(from);
        let Some(newest) = confirmed.vouched() else {
            return;
        };
        let newest = newest.tip;
        if newest.size <= written.0 || newest.checkpoint.is_empty() {
            return;
        }
        match self.write(&newest.checkpoint) {
            Ok(()) => {
                if written.1 {
                    tracing::info!(file = %self.path.display(),
                        "the newest checkpoint known is kept again");
                }
                *written = (newest.size, false);
            }
            Err(e) => {
                if !written.1 {
                    tracing::warn!(file = %self.path.display(), error = %e,
                        "the newest checkpoint known is not kept: after a restart this broker \
                         will not see a log rolled back behind it");
                }
                written.1 = true;
            }
        }
    }

    /// Keeps the newest checkpoint `confirmed` knows, once a second, until aborted; `from`,
    /// the size of the one read at start.
    pub fn keep(self, confirmed: Arc<Confirmed>, from: u64) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (this, confirmed) = (self.clone(), confirmed.clone());
                // The file's sync blocks: off the runtime's workers.
                let _ =
                    tokio::task::spawn_blocking(move || this.keep_newest(&confirmed, from)).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_checkpoint_is_kept_once_newer_and_a_failing_write_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let remembered = Remembered::in_data_dir(dir.path());
        let confirmed = Confirmed::default();
        assert_eq!(remembered.read().unwrap(), None);
        confirmed.offer(5, "five\n", None);
        remembered.keep_newest(&confirmed, 0);
        assert_eq!(remembered.read().unwrap().as_deref(), Some("five\n"));

        // Not newer than what was written: the file is left as it is (an operator removed it).
        std::fs::remove_file(remembered.path()).unwrap();
        remembered.keep_newest(&confirmed, 0);
        assert_eq!(remembered.read().unwrap(), None);

        // A write that fails (the file written aside cannot be made) is told until one works.
        std::fs::create_dir(remembered.path().with_extension("new")).unwrap();
        confirmed.offer(8, "eight\n", None);
        remembered.keep_newest(&confirmed, 0);
        assert!(remembered.failing());
        assert_eq!(remembered.read().unwrap(), None);
        std::fs::remove_dir(remembered.path().with_extension("new")).unwrap();
        remembered.keep_newest(&confirmed, 0);
        assert!(!remembered.failing());
        assert_eq!(remembered.read().unwrap().as_deref(), Some("eight\n"));
    }
}

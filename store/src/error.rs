//! Why the store cannot serve, and the one place where that becomes an answer's error.

use unefois_domain::error::ApiError;
use unefois_journal::JournalError;
use unefois_tlog::tree::ProofError;

/// Why the store cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The journal failed: nothing was recorded.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The derived state failed.
    #[error("derived state: {0}")]
    Sled(#[from] sled::Error),
    /// A journal record cannot be decoded.
    #[error("journal record {seq}: {source}")]
    Record {
        /// Its sequence number.
        seq: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// The Merkle tree's storage failed.
    #[error("audit tree: {0}")]
    Tree(ProofError),
    /// The entries' positions file failed.
    #[error("entry positions: {0}")]
    Positions(#[from] std::io::Error),
    /// The derived state's folder cannot be created or made private.
    #[error("{}: {source}", path.display())]
    StateDir {
        /// The folder, or the file in it.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A proof or checkpoint was asked for outside the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// The journal no longer gives the tree this broker signed a checkpoint of: a record was
    /// altered or lost where acknowledged records live. Restore from a backup.
    #[error(
        "the journal does not match the checkpoint of {size} entries this broker signed: a \
         record was altered or lost; restore the data directory from a backup"
    )]
    Diverged {
        /// The size of that checkpoint.
        size: u64,
    },
    /// The journal ends before a record this broker acknowledged (its derived state applied it,
    /// or a checkpoint it signed counts it): acknowledged records were lost. Restore from a
    /// backup.
    #[error(
        "the journal holds {journal} records, fewer than the {acknowledged} this broker \
         acknowledged (its derived state applied them or signed a checkpoint of them): \
         acknowledged records were lost; restore the data directory from a backup"
    )]
    JournalShort {
        /// The records the journal holds.
        journal: u64,
        /// The records the derived state says were acknowledged (applied or signed).
        acknowledged: u64,
    },
    /// The database failed or did not answer (PostgreSQL backend): what was asked may or may
    /// not have been committed; nothing was acknowledged.
    #[error("database: {0}")]
    Database(String),
    /// A tree size, a proof or an entry the log holds, beyond what a synchronous standby has
    /// confirmed to this broker yet (PostgreSQL backend: a standby lagging, or this broker
    /// behind another): unavailable for now, to be asked for again; not a failure.
    #[error("not yet confirmed by a synchronous standby: {0}")]
    NotYetConfirmed(String),
    /// The store is closed (the broker is stopping).
    #[error("the store is closed")]
    Closed,
    /// `unefois store import` began to copy a log into this database and did not finish: no
    /// broker may serve, nor extend, a part of a log whose later entries were handed out.
    #[error(
        "an import into this database did not finish ({copied} of {entries} entries copied): \
         run `unefois store import` again to finish it"
    )]
    ImportUnfinished {
        /// Entries copied so far.
        copied: u64,
        /// Entries of the log being imported.
        entries: u64,
    },
    /// The derived state fell behind the journal; it is rebuilt at the next start.
    #[error("derived state is behind the journal; restart the broker to rebuild it")]
    Degraded,
}

impl From<ProofError> for StoreError {
    /// A proof asked outside the tree is the caller's error; anything else is the store's.
    fn from(e: ProofError) -> StoreError {
        match e {
            ProofError::OutOfRange(m) => StoreError::OutOfRange(m),
            other => StoreError::Tree(other),
        }
    }
}

impl From<StoreError> for ApiError {
    /// The one conversion of a store failure into an answer, and the one place it is logged
    /// (with the line that met it): the caller is told the store is unavailable, never why,
    /// except for a proof asked outside the tree, which is the caller's own error and not logged.
    #[track_caller]
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::OutOfRange(m) => ApiError::TreeSizeOutOfRange(m),
            // A standby lagging is the operator's to watch (`/readyz`, the replication's
            // metrics), not a failure of each read it delays.
            StoreError::NotYetConfirmed(m) => {
                tracing::debug!(reason = %m, "answering STORE_UNAVAILABLE: not yet confirmed");
                ApiError::StoreUnavailable
            }
            other => {
                let at = std::panic::Location::caller();
                tracing::error!(error = %other, at = %at, "store failure; answering STORE_UNAVAILABLE");
                ApiError::StoreUnavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the logger writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Converts `e` as a `?` would, returning the answer's error and what was logged.
    fn convert(e: StoreError) -> (ApiError, String, u32) {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let (converted, line) = tracing::subscriber::with_default(subscriber, || {
            let failed: Result<(), StoreError> = Err(e);
            let (line, answered) = (line!(), || -> Result<(), ApiError> { Ok(failed?) });
            (answered().expect_err("a store failure"), line)
        });
        let logged = String::from_utf8(captured.0.lock().expect("not poisoned").clone());
        (converted, logged.expect("the log is text"), line)
    }

    #[test]
    fn a_store_failure_is_answered_unavailable_and_logged_once_with_its_line() {
        let (answer, logged, line) = convert(StoreError::Degraded);
        assert!(matches!(answer, ApiError::StoreUnavailable), "{answer:?}");
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(
            logged.contains("derived state is behind the journal"),
            "{logged}"
        );
        let at = format!("src/error.rs:{line}");
        assert!(logged.contains(&at), "the line that met it, {at}: {logged}");
    }

    #[test]
    fn a_proof_outside_the_tree_is_the_callers_error_and_not_logged() {
        let (answer, logged, _) = convert(StoreError::OutOfRange("size 9 > 4".into()));
        assert!(matches!(answer, ApiError::TreeSizeOutOfRange(ref m) if m == "size 9 > 4"));
        assert!(logged.is_empty(), "{logged}");
    }
}

//! The PostgreSQL backend of the [`Store`]: several brokers on one database, one log.
//!
//! PostgreSQL is the journal and the shared state. Each broker group-commits: its writer task
//! takes the appends waiting and, in one transaction, locks the log's coordination row
//! (`SELECT … FOR UPDATE`: the fence between brokers), gives the records the next leaf indices,
//! inserts them, applies their projections (the domain's, as every backend), extends the stored
//! Merkle hashes, signs the checkpoint with the shared log key (deterministic: every broker signs
//! the same bytes for the same tree), updates the row and commits. An append returns only after
//! the commit, which `synchronous_commit = on` with a synchronous standby makes durable on two
//! machines. A writer whose last commit is still the log's head (no other broker appended since)
//! sends its next batch in one round trip, advancing the row only from that head; when another
//! broker has moved it, the batch is done again under the lock, from a row the writer vouches
//! for (`vouched`: signed by the log key, not behind a head it knew). Under load a batch first
//! gathers for `GATHER`; a batch that waited for the lock takes the appends that arrived
//! meanwhile. A commit is never cancelled: when the database does not answer within
//! the append timeout the caller is told the store is unavailable, the writer keeps waiting for
//! the outcome, and appends whose callers gave up are dropped before they reach a transaction.
//!
//! Reads go to the primary (the URL's `target_session_attrs=read-write`): a decision sees every
//! acknowledged write, whichever broker made it. Reads of the log (checkpoints, proofs,
//! entries, a person's exchanges) stop at what a synchronous standby has (`confirmed`).

mod acts;
mod confirmed;
mod connect;
mod limits;
mod lookups;
mod remembered;
mod schema;
mod serialise;
mod sweep;
#[cfg(any(test, feature = "test-server"))]
pub mod test_server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tlog_tiles::{Hash, HashReader};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use super::{CheckpointSigner, Items, MandatesOf, Store, StoreError, StoreHealth};
use crate::consent::Consent;
use crate::event::{Event, Record, RecordedKeys, RecordedRegistry};
use crate::identity::{IdentityError, Verified};
use crate::mandate::Mandate;
use crate::projection::{self, Change, Models, RequestUse, Views};
use crate::seal::Sealer;

use confirmed::Vouched;
pub use connect::Connector;
use connect::{Conn, Params};
pub use remembered::Remembered;
pub use schema::MIGRATIONS;

/// How long an append waits for its commit before the caller is told the store is unavailable.
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// No `transaction_timeout` (PostgreSQL 17 and later) for the session: a transaction that holds
/// an act's locks idles while the act runs, and ending it would end them unseen. A macro, so
/// that `SYNCHRONOUS` is built from it at compile time.
macro_rules! no_transaction_timeout {
    () => {
        "SELECT set_config('transaction_timeout', '0', false) \
         WHERE current_setting('server_version_num')::int >= 170000"
    };
}
/// The session of a connection that writes: no statement or transaction timeout (whatever the
/// role's), which would cancel a COMMIT's wait for the standby (see `transaction`); a commit waits for the
/// synchronous standby (`on`, or the stronger `remote_apply`), whatever the role's or
/// database's setting: `local` or `off` would acknowledge records one machine holds, and `off`
/// would show them before they are flushed (which the reads' bound relies on: `confirmed`).
/// And what the writer relies on whatever the role's settings: the WARNING of a COMMIT whose
/// wait for the standby was cancelled (`client_min_messages` above `warning` would not send
/// it, and that commit, on the primary alone, would be acknowledged), and read committed
/// transactions (under `repeatable read` two writers meeting at the log's row fail).
const SYNCHRONOUS: &str = concat!(
    "SET statement_timeout = 0; ",
    "SET client_min_messages = warning; ",
    "SET default_transaction_isolation = 'read committed'; ",
    no_transaction_timeout!(),
    "; SELECT set_config('synchronous_commit', \
         CASE current_setting('synchronous_commit') \
         WHEN 'remote_apply' THEN 'remote_apply' ELSE 'on' END, false)"
);
/// The session of the reads: every read of a broker goes over it, pipelined, so that one
/// statement waiting stalls the decisions behind it. A read never waits long for a lock (only
/// an administrator's or a migration's DDL takes one that conflicts: `store init --contract`
/// dropping a trigger), nor runs long (each is a bounded page): the caller is told the store is
/// unavailable, and the reads behind it go on.
const READS: &str = "SET lock_timeout = '1s'; SET statement_timeout = '30s'";
/// The sessions that hold acts set it alone (`serialise`).
const NO_TRANSACTION_TIMEOUT: &str = no_transaction_timeout!();
/// How long the health probe waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Records in one transaction at most.
const MAX_BATCH: usize = 512;
/// How long the writer waits for more appends before a transaction when its previous batch held
/// `GATHER_FROM` records or more: under load each transaction (a round trip, a flush on two
/// machines, six processes woken) then carries more records, about 0.8 × the CPU per fetch
/// (BENCHMARKS.md, run U). Lighter loads do not wait (their tail would grow by the wait).
/// Tokio's timer ends it at its next millisecond tick after this.
const GATHER: Duration = Duration::from_millis(1);
/// The records of a previous batch from which the next one gathers for `GATHER`.
const GATHER_FROM: usize = 4;
/// Rows read per query when a list is read as the caller goes.
const PAGE_ROWS: i64 = 128;

/// What a database failure says, for the operator (the caller is told only "unavailable").
pub(crate) fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        let why = match e.as_db_error() {
            Some(d) => format!("{}: {}", d.severity(), d.message()),
            None => {
                let source = std::error::Error::source(&e).map(|s| format!(": {s}"));
                format!("{e}{}", source.unwrap_or_default())
            }
        };
        StoreError::Database(format!("{what}: {why}"))
    }
}

/// A failure to reach the database, naming it (never its password): what an operator starting
/// a command needs first.
fn naming(connector: &Connector) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| match e {
        StoreError::Database(why) => StoreError::Database(format!("{why} ({})", connector.shown())),
        other => other,
    }
}

/// Creates or migrates the schema at `url` (`unefois store init`); returns the versions applied.
/// The migrations in `schema::CONTRACTS` only with `contract` or on a new schema.
pub async fn init(url: &str, contract: bool) -> Result<Vec<usize>, StoreError> {
    let connector = Connector::parse(url)?;
    let mut client = connector.connect().await.map_err(naming(&connector))?;
    schema::migrate(&mut client, contract).await
}

/// The number of entries in the log at `url`: whether a broker joins a running cluster (its keys
/// must then already be there) or starts its first log.
pub async fn log_size(url: &str) -> Result<u64, StoreError> {
    let connector = Connector::parse(url)?;
    let client = Conn::new(connector.connect().await.map_err(naming(&connector))?);
    schema::check(&client).await?;
    Ok(read_head(&client).await?.size)
}

/// An append waiting for its transaction.
struct Pending {
    /// Each record with its exact entry bytes (encoded by the caller; as found, on import).
    records: Vec<(Record, Vec<u8>)>,
    reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
    /// The hold of the act that made it, if any: committed only while it stands.
    hold: Option<Arc<serialise::HoldProof>>,
}

use super::{Appended, Proven};

/// The log and read models in a PostgreSQL database shared by the brokers of a cluster.
pub struct Postgres {
    connector: Connector,
    reads: Arc<connect::Shared>,
    /// The bound of reads of the log: what a synchronous standby has.
    confirmed: Arc<confirmed::Confirmed>,
    lookups: lookups::Lookups,
    /// The holds of acts across brokers (`Store::serialise`).
    locks: Arc<serialise::Locks>,
    /// The acts of the ID tokens in use, counted for every broker (`Store::spend_act`).
    acts: acts::Acts,
    /// The counts of the limits, shared with the other brokers (`Store::share_limits`).
    limits: limits::Limits,
    writer: mpsc::Sender<Pending>,
    log: Arc<dyn CheckpointSigner>,
    sealer: Arc<Sealer>,
    append_timeout: Duration,
    closed: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the newest checkpoint known is kept, and the task keeping it.
    remembered: Option<(Remembered, tokio::task::JoinHandle<()>)>,
}

impl Postgres {
    /// Connects to the database at `url` (its schema at this build's version, see [`init`]),
    /// checks that its log was signed with `log`'s key, and starts the writer.
    pub async fn open(
        url: &str,
        log: impl CheckpointSigner + 'static,
        sealer: Arc<Sealer>,
        append_timeout: Duration,
    ) -> Result<Postgres, StoreError> {
        Postgres::open_remembering(url, log, sealer, append_timeout, None).await
    }

    /// As [`Postgres::open`], keeping the newest checkpoint known in `remembered` (a broker's
    /// data folder): refuses a log that does not hold the one kept there by an earlier run.
    pub async fn open_remembering(
        url: &str,
        log: impl CheckpointSigner + 'static,
        sealer: Arc<Sealer>,
        append_timeout: Duration,
        remembered: Option<Remembered>,
    ) -> Result<Postgres, StoreError> {
        let connector = Connector::parse(url)?;
        let reads = Arc::new(connect::Shared::with_setup(connector.clone(), READS));
        let client = reads.client().await.map_err(naming(&connector))?;
        let applied = schema::check(&client).await?;
        if let Some(behind) = schema::behind(&applied) {
            tracing::warn!(store = connector.shown(), "{behind}");
        }
        let log: Arc<dyn CheckpointSigner> = Arc::new(log);
        let head = read_head(&client).await?;
        if !signed(&head, &*log) {
            return Err(StoreError::Database(format!(
                "the log in {} was signed with another log key than this broker's ({}): every \
                 broker of a cluster uses the same keys (copy data/keys from one broker)",
                connector.shown(),
                log.vkey()
            )));
        }
        let confirmed = Arc::new(confirmed::Confirmed::default());
        let remembered = match remembered {
            None => None,
            Some(remembered) => {
                let mut kept = 0;
                if let Some(note) = remembered.read()? {
                    let knew = knew_of(&note, &*log, &client).await.and_then(|knew| {
                        vouched(&head, &*log, &knew)?;
                        Ok(knew)
                    });
                    let knew = knew.map_err(|e| {
                        StoreError::Database(format!(
                            "{e}; this broker last knew the log at the checkpoint in {}: if the \
                             database was restored on purpose, accepting the loss of what it \
                             lacks, remove that file",
                            remembered.path().display()
                        ))
                    })?;
                    confirmed.offer(knew.size, &note, None);
                    kept = knew.size;
                }
                let keeping = remembered.clone().keep(confirmed.clone(), kept);
                Some((remembered, keeping))
            }
        };
        let (writer, queue) = mpsc::channel(4096);
        let task = tokio::spawn(write_loop(
            connector.clone(),
            log.clone(),
            sealer.clone(),
            confirmed.clone(),
            queue,
        ));
        Ok(Postgres {
            acts: acts::Acts::new(connector.clone(), append_timeout),
            limits: limits::Limits::new(connector.clone()),
            locks: Arc::new(serialise::Locks::new(
                connector.clone(),
                writer.clone(),
                append_timeout,
            )),
            connector,
            confirmed,
            lookups: lookups::Lookups::start(reads.clone()),
            reads,
            writer,
            log,
            sealer,
            append_timeout,
            closed: AtomicBool::new(false),
            task: Mutex::new(Some(task)),
            remembered,
        })
    }

    /// Copies a log into this empty one, entry for entry (the exact bytes, so the same leaf
    /// indices, roots and checkpoints: an auditor's trusted checkpoint stays consistent), with
    /// the read models their projection gives. Refuses a database whose log is not empty,
    /// unless it holds the start of this very log from an import that did not finish, which it
    /// then finishes. Until the copy's checkpoint is the source's, the database is marked
    /// ([`Postgres::unfinished_import`]) and no broker starts on it. Returns the number of
    /// entries copied by this call.
    pub async fn import(&self, source: &dyn Store) -> Result<u64, StoreError> {
        let (entries, checkpoint) = source.latest_checkpoint().await?.unwrap_or_default();
        let size = read_head(&*self.client().await?).await?.size;
        let start = match self.unfinished_import().await? {
            // Nothing copied yet (none, or a cut before the first transaction committed): an
            // empty log is the start of any.
            _ if size == 0 => 0,
            None => {
                return Err(StoreError::Database(format!(
                    "the log in {} already has {size} entries: import only into an empty one",
                    self.location()
                )));
            }
            Some(marked)
                if marked.checkpoint == checkpoint
                    && size <= entries
                    && self.latest_checkpoint().await?.map(|(_, note)| note)
                        == Some(source.checkpoint_at(size).await?) =>
            {
                size
            }
            Some(_) => {
                return Err(StoreError::Database(format!(
                    "the log in {} holds {size} entries of an unfinished import of another log",
                    self.location()
                )));
            }
        };
        if entries == 0 {
            return Ok(0);
        }
        let marker = serde_json::json!({ "entries": entries, "checkpoint": checkpoint });
        self.client()
            .await?
            .execute(UPSERT_META, &[&"import_unfinished", &marker])
            .await
            .map_err(db("mark the import unfinished"))?;
        let mut items = source.entries_from(start);
        let mut batch = Vec::new();
        let mut copied = start;
        while copied < entries {
            let next = items.next().await.transpose()?;
            if let Some((index, entry)) = next.filter(|(index, _)| *index < entries) {
                if index != copied + batch.len() as u64 {
                    return Err(StoreError::OutOfRange(format!(
                        "the source log skips from entry {} to {index}",
                        copied + batch.len() as u64
                    )));
                }
                let record = Record::decode(&entry)
                    .map_err(|source| StoreError::Record { seq: index, source })?;
                batch.push((record, entry));
                if batch.len() < MAX_BATCH && copied + (batch.len() as u64) < entries {
                    continue;
                }
            }
            if batch.is_empty() {
                return Err(StoreError::OutOfRange(format!(
                    "the source log ends at entry {copied}, before its checkpoint's {entries}"
                )));
            }
            copied += self.send(std::mem::take(&mut batch)).await?.len() as u64;
        }
        let copy = self.latest_checkpoint().await?.map(|(_, note)| note);
        if copy.as_deref() != Some(checkpoint.as_str()) {
            return Err(StoreError::Database(
                "the imported log's checkpoint differs from the source's".into(),
            ));
        }
        self.client()
            .await?
            .execute(
                "DELETE FROM unefois_meta WHERE name = 'import_unfinished'",
                &[],
            )
            .await
            .map_err(db("mark the import finished"))?;
        Ok(copied - start)
    }

    /// The import that began into this database and did not finish, if any: a broker must not
    /// start on it ([`StoreError::ImportUnfinished`]).
    pub async fn unfinished_import(&self) -> Result<Option<UnfinishedImport>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM unefois_meta WHERE name = 'import_unfinished'",
                &[],
            )
            .await
            .map_err(db("read the import's mark"))?;
        row.map(|row| body(&row)).transpose()
    }

    /// The database, as it may be shown (no password).
    pub fn location(&self) -> &str {
        self.connector.shown()
    }

    async fn client(&self) -> Result<Arc<Conn>, StoreError> {
        self.reads.client().await
    }

    async fn append_encoded(&self, records: Vec<Record>) -> Result<Vec<Appended>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let records = records
            .into_iter()
            .map(|r| {
                let entry = r.encode();
                (r, entry)
            })
            .collect();
        self.send(records).await
    }

    /// Queues `records` for the writer and waits for their commit, at most the append timeout
    /// in all: a writer stuck on one commit (a standby stopped) fills its queue, and an append
    /// waiting for room in it is answered within the timeout too.
    async fn send(&self, records: Vec<(Record, Vec<u8>)>) -> Result<Vec<Appended>, StoreError> {
        // The kinds for the metrics, taken here: the entries would have to be decoded after.
        let kinds: Vec<&'static str> = records.iter().map(|(r, _)| r.event.kind()).collect();
        let (reply, answer) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.append_timeout;
        let unacknowledged = || {
            StoreError::Database(format!(
                "no commit acknowledged within {:?} (is a synchronous standby streaming?)",
                self.append_timeout
            ))
        };
        let hold = crate::serialised::acting().and_then(serialise::HoldProof::of);
        let pending = Pending {
            records,
            reply,
            hold,
        };
        match tokio::time::timeout_at(deadline, self.writer.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => return Err(unacknowledged()),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => {
                if result.is_ok() {
                    for kind in kinds {
                        crate::metrics::audit_entries(kind, 1);
                    }
                }
                result
            }
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(unacknowledged()),
        }
    }

    /// Rows of `sql` (one page at a time, after the text key `after`), decoded by `decode`.
    fn paged<'a, T: Send + 'a>(
        &'a self,
        sql: &'static str,
        key: String,
        after: String,
        decode: fn(&tokio_postgres::Row) -> Result<(String, T), StoreError>,
    ) -> Items<'a, T> {
        let state = (after, Vec::<T>::new().into_iter(), false);
        futures::stream::unfold(state, move |(after, mut page, done)| {
            let key = key.clone();
            async move {
                if let Some(item) = page.next() {
                    return Some((Ok(item), (after, page, done)));
                }
                if done {
                    return None;
                }
                let rows = match self.client().await {
                    Ok(client) => client
                        .query_typed(
                            sql,
                            &[
                                (&key, Type::TEXT),
                                (&after, Type::TEXT),
                                (&PAGE_ROWS, Type::INT8),
                            ],
                        )
                        .await
                        .map_err(db("read a list")),
                    Err(e) => Err(e),
                };
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => return Some((Err(e), (after, Vec::new().into_iter(), true))),
                };
                let done = (rows.len() as i64) < PAGE_ROWS;
                let mut items = Vec::with_capacity(rows.len());
                let mut last = after;
                for row in &rows {
                    match decode(row) {
                        Ok((id, item)) => {
                            last = id;
                            items.push(item);
                        }
                        Err(e) => return Some((Err(e), (last, Vec::new().into_iter(), true))),
                    }
                }
                let mut page = items.into_iter();
                let first = page.next()?;
                Some((Ok(first), (last, page, done)))
            }
        })
        .boxed()
    }

    /// Stored hashes by index, for a proof or a root: computed from those `compute` asks for,
    /// read from the database in one query per pass.
    async fn with_hashes<T>(
        &self,
        compute: impl Fn(&Fetched) -> Result<T, tlog_tiles::Error>,
    ) -> Result<T, StoreError> {
        let reader = Fetched::default();
        for _ in 0..4 {
            match compute(&reader) {
                Ok(found) => return Ok(found),
                Err(e) => {
                    let missing = reader.take_missing();
                    if missing.is_empty() {
                        return Err(StoreError::Tree(unefois_tlog::tree::ProofError::Storage(
                            e.to_string(),
                        )));
                    }
                    let client = self.client().await?;
                    let rows = client
                        .query_typed(READ_TREE, &[(&missing, Type::INT8_ARRAY)])
                        .await
                        .map_err(db("read the tree"))?;
                    let mut known = reader.known.lock().unwrap_or_else(|e| e.into_inner());
                    for row in rows {
                        let idx: i64 = row.get(0);
                        let hash: Vec<u8> = row.get(1);
                        if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                            known.insert(idx as u64, Hash(hash));
                        }
                    }
                }
            }
        }
        Err(StoreError::Tree(unefois_tlog::tree::ProofError::Storage(
            "the stored hashes of the tree are incomplete".into(),
        )))
    }

    /// The newest head a synchronous standby has (see [`confirmed`]).
    async fn tip(&self) -> Result<confirmed::Tip, StoreError> {
        self.confirmed.read(&self.reads).await
    }

    /// Whether a tree of `size` entries is within the log a standby has: without a read when
    /// a head at least that large is known confirmed.
    async fn within(&self, size: u64) -> Result<(), StoreError> {
        if size <= self.confirmed.known_size() {
            return Ok(());
        }
        super::within(self.served_for(size).await?.size, size)
    }

    /// The head served ([`Postgres::tip`]), asked about a tree of `size` entries: beyond it but
    /// within the log's row (a standby lagging, or this broker behind the one that answered
    /// the caller before), that tree is unavailable for now, which a caller tries again, not
    /// out of range.
    async fn served_for(&self, size: u64) -> Result<confirmed::Tip, StoreError> {
        let (tip, row) = self.confirmed.read_with_row(&self.reads).await?;
        if size > tip.size && size <= row {
            return Err(StoreError::NotYetConfirmed(format!(
                "a tree of {size} entries is in the log, beyond the {} a synchronous standby \
                 has confirmed to this broker yet: try again",
                tip.size
            )));
        }
        Ok(tip)
    }
}

/// The stored hashes of the indices `$1`, each cut from the run that holds it (the run of the
/// greatest `first` not above it).
const READ_TREE: &str = "SELECT i, \
     substring(run.hashes FROM ((i - run.first) * 32 + 1)::int FOR 32) FROM unnest($1::bigint[]) AS i, LATERAL (SELECT first, hashes FROM unefois_tree_runs \
     WHERE first <= i ORDER BY first DESC LIMIT 1) AS run \
     WHERE (i - run.first) * 32 < length(run.hashes)";

/// The coordination row.
#[derive(Clone)]
struct Head {
    size: u64,
    frontier: Vec<(u8, u64, Hash)>,
    checkpoint: String,
}

async fn read_head(client: &Conn) -> Result<Head, StoreError> {
    let rows = client
        .query_typed("SELECT size, frontier, checkpoint FROM unefois_log", &[])
        .await
        .map_err(db("read the log's head"))?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Database("the log's coordination row is missing".into()))?;
    head_of(row)
}

fn head_of(row: &tokio_postgres::Row) -> Result<Head, StoreError> {
    let unreadable = db("read the log's coordination row");
    let size: i64 = row.try_get(0).map_err(&unreadable)?;
    let frontier: Vec<u8> = row.try_get(1).map_err(&unreadable)?;
    Ok(Head {
        size: u64::try_from(size).unwrap_or_default(),
        frontier: decode_frontier(&frontier)?,
        checkpoint: row.try_get(2).map_err(&unreadable)?,
    })
}

/// The frontier as stored: 41 bytes a subtree (level, stored index big-endian, hash).
fn encode_frontier(frontier: &[(u8, u64, Hash)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frontier.len() * 41);
    for (level, index, hash) in frontier {
        out.push(*level);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&hash.0);
    }
    out
}

fn decode_frontier(bytes: &[u8]) -> Result<Vec<(u8, u64, Hash)>, StoreError> {
    if !bytes.len().is_multiple_of(41) {
        return Err(StoreError::Database(
            "the log's stored frontier is damaged".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(41)
        .map(|c| {
            let mut index = [0u8; 8];
            index.copy_from_slice(&c[1..9]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&c[9..41]);
            (c[0], u64::from_be_bytes(index), Hash(hash))
        })
        .collect())
}

fn frontier_root(frontier: &[(u8, u64, Hash)]) -> [u8; 32] {
    crate::tree::frontier_root(frontier).0
}

/// A hash reader that records what it was asked and did not have.
#[derive(Default)]
struct Fetched {
    known: Mutex<std::collections::HashMap<u64, Hash>>,
    missing: Mutex<Vec<i64>>,
}

impl Fetched {
    fn take_missing(&self) -> Vec<i64> {
        std::mem::take(&mut *self.missing.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl HashReader for Fetched {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = Vec::with_capacity(indexes.len());
        for index in indexes {
            match known.get(index) {
                Some(h) => found.push(*h),
                None => missing.push(i64::try_from(*index).unwrap_or(i64::MAX)),
            }
        }
        match missing.is_empty() {
            true => Ok(found),
            false => Err(tlog_tiles::Error::IndexesNotInTree),
        }
    }
}

/// The read models a batch's projection reads, loaded from the database as it asks for them:
/// a miss is recorded, loaded, and the (pure) projection of that record run again.
#[derive(Default)]
struct Overlay {
    models: Models,
    consents: HashSet<String>,
    mandates: HashSet<String>,
    under: HashSet<String>,
    misses: Mutex<Misses>,
    /// The consents and mandates this batch changed: written back once each.
    changed_consents: HashSet<String>,
    changed_mandates: HashSet<String>,
}

#[derive(Default)]
struct Misses {
    consents: Vec<String>,
    mandates: Vec<String>,
    under: Vec<String>,
}

impl Misses {
    fn is_empty(&self) -> bool {
        self.consents.is_empty() && self.mandates.is_empty() && self.under.is_empty()
    }
}

impl Overlay {
    fn miss(&self, add: impl FnOnce(&mut Misses)) {
        add(&mut self.misses.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn take_misses(&self) -> Misses {
        std::mem::take(&mut *self.misses.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loads what the projection missed (never over what this batch already changed).
    async fn load(&mut self, tx: &Conn, misses: Misses) -> Result<(), StoreError> {
        if !misses.consents.is_empty() {
            let rows = tx
                .query_typed(
                    "SELECT body FROM unefois_consents WHERE id = ANY($1)",
                    &[(&misses.consents, Type::TEXT_ARRAY)],
                )
                .await
                .map_err(db("read consents"))?;
            for row in rows {
                let c: Consent = body(&row)?;
                self.models.consents.entry(c.id.clone()).or_insert(c);
            }
            self.consents.extend(misses.consents);
        }
        if !misses.mandates.is_empty() {
            let rows = tx
                .query_typed(
                    "SELECT body FROM unefois_mandates WHERE id = ANY($1)",
                    &[(&misses.mandates, Type::TEXT_ARRAY)],
                )
                .await
                .map_err(db("read mandates"))?;
            for row in rows {
                let m: Mandate = body(&row)?;
                self.models.mandates.entry(m.id.clone()).or_insert(m);
            }
            self.mandates.extend(misses.mandates);
        }
        if !misses.under.is_empty() {
            let rows = tx
                .query_typed(
                    "SELECT body FROM unefois_consents WHERE mandate_id = ANY($1)",
                    &[(&misses.under, Type::TEXT_ARRAY)],
                )
                .await
                .map_err(db("read consents under mandates"))?;
            for row in rows {
                let c: Consent = body(&row)?;
                self.consents.insert(c.id.clone());
                self.models.consents.entry(c.id.clone()).or_insert(c);
            }
            self.under.extend(misses.under);
        }
        Ok(())
    }

    /// A change of this batch: held for the next records, and known from now on.
    fn write(&mut self, change: Change) {
        match &change {
            Change::ConsentGranted(c) | Change::ConsentChanged(c) => {
                self.consents.insert(c.id.clone());
                self.changed_consents.insert(c.id.clone());
            }
            Change::MandateCreated(m) | Change::MandateChanged(m) => {
                self.mandates.insert(m.id.clone());
                self.changed_mandates.insert(m.id.clone());
            }
            _ => {}
        }
        self.models.write(change);
    }
}

impl Views for Overlay {
    type Error = Infallible;

    fn consent(&self, id: &str) -> Result<Option<Consent>, Infallible> {
        if !self.consents.contains(id) {
            self.miss(|m| m.consents.push(id.to_string()));
        }
        Ok(self.models.consents.get(id).cloned())
    }

    fn mandate(&self, id: &str) -> Result<Option<Mandate>, Infallible> {
        if !self.mandates.contains(id) {
            self.miss(|m| m.mandates.push(id.to_string()));
        }
        Ok(self.models.mandates.get(id).cloned())
    }

    fn consents_under(&self, mandate_id: &str) -> Result<Vec<Consent>, Infallible> {
        if !self.under.contains(mandate_id) {
            self.miss(|m| m.under.push(mandate_id.to_string()));
        }
        Views::consents_under(&self.models, mandate_id)
    }
}

/// A read model's `jsonb` body (the row's first column), decoded straight from its bytes.
fn body<T: serde::de::DeserializeOwned>(row: &tokio_postgres::Row) -> Result<T, StoreError> {
    row.try_get::<_, tokio_postgres::types::Json<T>>(0)
        .map(|json| json.0)
        .map_err(|e| StoreError::Database(format!("a stored read model is unreadable: {e}")))
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Takes the appends waiting, one transaction at a time, for as long as the store is open.
async fn write_loop(
    connector: Connector,
    log: Arc<dyn CheckpointSigner>,
    sealer: Arc<Sealer>,
    confirmed: Arc<confirmed::Confirmed>,
    mut queue: mpsc::Receiver<Pending>,
) {
    let mut client: Option<Conn> = None;
    // The head this writer's last commit left, while no other broker is seen to move it: the
    // next batch then starts from it in one round trip (see `transaction`).
    let mut last: Option<Head> = None;
    // Batches left to start under the lock after the log was found moved by another broker.
    let mut locked_for = 0u32;
    // Records in the previous batch: `GATHER_FROM` or more means appends are arriving faster
    // than transactions go, and the next batch waits `GATHER` for more.
    let mut previous = 0usize;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        if previous >= GATHER_FROM {
            tokio::time::sleep(GATHER).await;
        }
        gather(&mut batch, &mut queue);
        if batch.iter().all(|p| p.records.is_empty()) {
            for pending in batch {
                let _ = pending.reply.send(Ok(Vec::new()));
            }
            continue;
        }
        let started = std::time::Instant::now();
        // Only a head this writer saw committed, and only until its next batch.
        let cached = last.take();
        let mut from = if locked_for > 0 {
            locked_for -= 1;
            None
        } else {
            cached
        };
        let connected = match client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                // A new connection may reach a new primary: its first batch reads the row.
                from = None;
                async {
                    let c = Conn::connect(&connector).await?;
                    // See `SYNCHRONOUS`.
                    c.batch_execute(SYNCHRONOUS)
                        .await
                        .map_err(db("set the writer's statement timeout and commit"))?;
                    // Every statement of a batch is prepared before any is sent: a write that
                    // could not be sent would otherwise leave its COMMIT to commit the others.
                    c.prepare_all(WRITES)
                        .await
                        .map_err(db("prepare the writer's statements"))?;
                    Ok(c)
                }
                .await
            }
        };
        let result = match connected {
            Ok(c) => {
                let c = client.insert(c);
                let base = Base {
                    log: &*log,
                    sealer: &sealer,
                    confirmed: &confirmed,
                };
                // Each attempt either commits, or fails with nothing written; an act's hold
                // found ended takes its append out of the batch, at most once per append.
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match commit(c, &base, &mut batch, &mut queue, from.as_ref()).await {
                        Err(Failure::Moved) if from.is_some() => {
                            // Another broker appended since: this batch again, under the lock.
                            locked_for = LOCKED_AFTER_MOVED;
                            from = None;
                        }
                        Err(Failure::HoldsLost(e)) if attempts <= MAX_BATCH => {
                            if let Err(e) = refuse_lost_holds(c, &mut batch, e).await {
                                break Err(e);
                            }
                            if batch.iter().all(|p| p.records.is_empty()) {
                                // Nothing left to write: the head is still the one started
                                // from, if any.
                                break Ok((Vec::new(), from.take()));
                            }
                        }
                        Err(failure) => break Err(failure.into_error()),
                        Ok((appended, head)) => break Ok((appended, Some(head))),
                    }
                }
            }
            Err(e) => Err(e),
        };
        // The batch may have grown while it waited for the lock.
        let count = batch.iter().map(|p| p.records.len()).sum::<usize>();
        previous = count;
        match result {
            Ok((appended, head)) => {
                // Acknowledged by a synchronous standby (a commit it did not acknowledge came
                // with a warning, and is an error here).
                if let Some(head) = &head {
                    confirmed.offer(head.size, &head.checkpoint, head.frontier.last().copied());
                    // A batch is one transaction: the journal's histogram, so that one
                    // dashboard reads both backends.
                    metrics::histogram!(unefois_journal::JOURNAL_BATCH_RECORDS)
                        .record(count as f64);
                    metrics::histogram!("unefois_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                last = head;
                let mut appended = appended.into_iter();
                for pending in batch {
                    let mine: Vec<_> = appended.by_ref().take(pending.records.len()).collect();
                    let _ = pending.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "append to the database failed");
                if client.as_ref().is_some_and(|c| c.is_closed()) {
                    client = None;
                }
                // The operator's message once: the caller's error carries the same words.
                let message = match &e {
                    StoreError::Database(message) => message.clone(),
                    other => other.to_string(),
                };
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::Database(message.clone())));
                }
            }
        }
    }
}

/// After the check of the acts' holds aborted a batch's transaction (with `error`): refuses the
/// appends whose hold no longer stands, and takes them out of `batch`. Finding none, the check
/// failed for another reason: `error`.
async fn refuse_lost_holds(
    client: &Conn,
    batch: &mut Vec<Pending>,
    error: StoreError,
) -> Result<(), StoreError> {
    let holds = serialise::BatchHolds::of(batch.iter().map(|p| p.hold.as_deref()));
    let rows = client
        .query_typed(serialise::LOST_HOLDS, &holds.params())
        .await
        .map_err(db("find the acts' holds that ended"))?;
    let lost: HashSet<usize> = rows
        .iter()
        .filter_map(|row| row.try_get::<_, i32>(0).ok())
        .filter_map(|at| usize::try_from(at).ok())
        .collect();
    if lost.is_empty() {
        return Err(error);
    }
    tracing::warn!(
        appends = lost.len(),
        "an act's hold across the brokers ended (its database session ended) before its record \
         was committed: the record is refused, another broker may be acting on the same person"
    );
    for (at, pending) in std::mem::take(batch).into_iter().enumerate() {
        if lost.contains(&at) {
            let _ = pending
                .reply
                .send(Err(StoreError::Database(HOLD_LOST.into())));
        } else {
            batch.push(pending);
        }
    }
    Ok(())
}

/// Why an act's append was refused when its hold ended first.
pub(crate) const HOLD_LOST: &str = "the act's hold on its person across the brokers ended before its \
    record was committed (its database session ended): not recorded";

/// Adds the appends waiting in `queue` to `batch`, up to `MAX_BATCH` records, and drops those
/// whose callers gave up: they were told the store is unavailable, and their records are not
/// written after the fact.
fn gather(batch: &mut Vec<Pending>, queue: &mut mpsc::Receiver<Pending>) {
    let mut count: usize = batch.iter().map(|p| p.records.len()).sum();
    while count < MAX_BATCH {
        match queue.try_recv() {
            Ok(more) => {
                count += more.records.len();
                batch.push(more);
            }
            Err(_) => break,
        }
    }
    batch.retain(|p| !p.reply.is_closed());
}

/// What a batch builds on besides the row: the log key, the sealer, and the size of the newest
/// head this broker knew (its own last commit, or one a read confirmed).
#[derive(Clone, Copy)]
struct Base<'a> {
    log: &'a dyn CheckpointSigner,
    sealer: &'a Sealer,
    /// The newest head this broker vouches for, whose tree a row read under the lock must hold.
    confirmed: &'a confirmed::Confirmed,
}

/// The newest head this broker vouches for, and part of its tree as the database stores it
/// now (read under the lock): whether the stored tree still holds that head's tree.
struct Knew {
    size: u64,
    /// What the stored hashes read must fold to: the head's root (its whole right edge read),
    /// or the hash of its rightmost subtree (that one read), which holds its last entry.
    expected: Hash,
    /// How many stored hashes were read for it.
    read: usize,
    /// The stored hashes found, `(level, stored index, hash)`, highest first; those missing
    /// from the database left out.
    stored: Vec<(u8, u64, Hash)>,
}

/// What to read of the stored tree to see whether it still holds a head's tree: the stored
/// hash of its rightmost subtree, which holds its last entry, when the writer made the head
/// (`Vouched::last`); else its whole right edge, to fold to the root its checkpoint states.
struct Check {
    size: u64,
    edge: Vec<(u8, u64)>,
    expected: Hash,
}

impl Check {
    /// The check of `vouched` (none for no head).
    fn of(vouched: Option<&Vouched>) -> Check {
        let none = || Check {
            size: vouched.map_or(0, |v| v.tip.size),
            edge: Vec::new(),
            expected: Hash([0; 32]),
        };
        match vouched {
            None => none(),
            Some(Vouched {
                tip,
                last: Some((level, index, hash)),
            }) => Check {
                size: tip.size,
                edge: vec![(*level, *index)],
                expected: *hash,
            },
            Some(Vouched { tip, last: None }) => {
                match unefois_tlog::receipt::checkpoint_root(&tip.checkpoint) {
                    Some(root) => Check {
                        size: tip.size,
                        edge: edge(tip.size),
                        expected: Hash(root),
                    },
                    None => none(),
                }
            }
        }
    }

    /// The stored indices to read, as [`READ_TREE`] takes them.
    fn indices(&self) -> Vec<i64> {
        self.edge
            .iter()
            .map(|&(_, i)| i64::try_from(i).unwrap_or(i64::MAX))
            .collect()
    }

    /// What was found, from `rows` of [`READ_TREE`].
    fn found(self, rows: &[tokio_postgres::Row]) -> Knew {
        let stored: HashMap<u64, Hash> = rows
            .iter()
            .filter_map(|row| {
                let hash: Vec<u8> = row.get(1);
                Some((row.get::<_, i64>(0) as u64, Hash(hash.try_into().ok()?)))
            })
            .collect();
        Knew {
            size: self.size,
            expected: self.expected,
            read: self.edge.len(),
            stored: self
                .edge
                .iter()
                .filter_map(|&(level, i)| Some((level, i, *stored.get(&i)?)))
                .collect(),
        }
    }
}

/// What a checkpoint kept by an earlier run says this broker knew, with the right edge of its
/// tree as stored now; refused unless `log` signed it.
async fn knew_of(
    note: &str,
    log: &dyn CheckpointSigner,
    client: &Conn,
) -> Result<Knew, StoreError> {
    let size = unefois_tlog::receipt::checkpoint_size(note);
    let root = unefois_tlog::receipt::checkpoint_root(note);
    let (Some(size), Some(root)) = (size, root) else {
        return Err(StoreError::Database("not a checkpoint".into()));
    };
    if log.sign(size, root) != note {
        return Err(StoreError::Database(
            "a checkpoint not signed by this broker's log key".into(),
        ));
    }
    let tip = confirmed::Tip {
        size,
        checkpoint: note.to_string(),
    };
    let check = Check::of(Some(&Vouched { tip, last: None }));
    let rows = client
        .query_typed(READ_TREE, &[(&check.indices(), Type::INT8_ARRAY)])
        .await
        .map_err(db("read the tree this broker knew"))?;
    Ok(check.found(&rows))
}

/// The right edge of the tree of `size` leaves: each complete subtree's `(level, stored
/// index)`, highest first, as [`crate::tree::push_leaf`] keeps them.
fn edge(size: u64) -> Vec<(u8, u64)> {
    let mut start = 0u64;
    (0..64u8)
        .rev()
        .filter(|level| size & (1u64 << level) != 0)
        .map(|level| {
            let at = (level, tlog_tiles::stored_hash_index(level, start >> level));
            start += 1u64 << level;
            at
        })
        .collect()
}

/// Whether the coordination row, as another writer (or anyone with access to the database)
/// left it, may be extended: signed by the log key over its own frontier (a row rewritten
/// without the key is not), not behind the newest head this broker vouches for, and with that
/// head's tree still stored (a log rolled back by hand, or by a failover to a standby that
/// lacked acknowledged commits, even if written again since past that head). Extending any of
/// them would fork the log under checkpoints already handed out, so the writes stop
/// (UNAVAILABLE) until an operator has looked.
fn vouched(head: &Head, log: &dyn CheckpointSigner, knew: &Knew) -> Result<(), StoreError> {
    let known = knew.size;
    if head.size < known {
        return Err(StoreError::Database(format!(
            "the log went back from {known} to {} entries in the database (restored, rolled \
             back, or failed over to a standby that lacked commits): not extended, which would \
             fork it under the checkpoints handed out",
            head.size
        )));
    }
    if !signed(head, log) {
        return Err(StoreError::Database(format!(
            "the log's coordination row ({} entries) is not signed by this broker's log key over \
             its tree: a broker with other keys wrote it (every broker of a cluster uses the same \
             keys: start the first one alone, then copy its data/keys), or it was altered in the \
             database; not extended",
            head.size
        )));
    }
    if known > 0
        && (knew.stored.len() != knew.read || frontier_root(&knew.stored) != knew.expected.0)
    {
        return Err(StoreError::Database(format!(
            "the tree stored in the database no longer holds the {known} entries this broker \
             knew (the log was rolled back, then written again: restored, or failed over to a \
             standby that lacked commits): not extended, which would fork it under the \
             checkpoints handed out"
        )));
    }
    Ok(())
}

/// Whether `head`'s checkpoint is `log`'s over its frontier (an empty log has none to check).
fn signed(head: &Head, log: &dyn CheckpointSigner) -> bool {
    head.size == 0 || log.sign(head.size, frontier_root(&head.frontier)) == head.checkpoint
}

/// Sends the writer an empty append and returns its answer to wait for (`None` when the writer
/// is gone): the writer answers its queue in order, so once this is answered every append
/// queued before it is committed, refused, or dropped unwritten.
async fn barrier(
    writer: &mpsc::Sender<Pending>,
) -> Option<oneshot::Receiver<Result<Vec<Appended>, StoreError>>> {
    let (reply, answer) = oneshot::channel();
    let empty = Pending {
        records: Vec::new(),
        reply,
        hold: None,
    };
    writer.send(empty).await.ok().map(|()| answer)
}

/// Returns once every append queued to `writer` before has its outcome (`Store::settled`).
async fn settled(writer: &mpsc::Sender<Pending>) {
    if let Some(answer) = barrier(writer).await {
        let _ = answer.await;
    }
}

/// Batches started under the lock after the log was found moved, before trying again from
/// the last head: with several brokers taking turns, one batch in this many pays a round trip
/// for nothing.
const LOCKED_AFTER_MOVED: u32 = 32;

/// Why a batch's transaction did not commit.
enum Failure {
    /// Started from this writer's last head, the log had moved: nothing was written.
    Moved,
    /// The check of the acts' holds aborted the transaction (with this error): a hold of an
    /// append in the batch no longer stands, most likely. Nothing was written.
    HoldsLost(StoreError),
    Failed(StoreError),
}

impl Failure {
    fn into_error(self) -> StoreError {
        match self {
            Failure::Moved => StoreError::Database("the log moved during the batch".into()),
            Failure::HoldsLost(e) => e,
            Failure::Failed(e) => e,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Failed(e)
    }
}

/// One batch, in one transaction: see the module's documentation. Returns the batch's
/// appended entries and the head it left.
async fn commit(
    client: &Conn,
    base: &Base<'_>,
    batch: &mut Vec<Pending>,
    queue: &mut mpsc::Receiver<Pending>,
    from: Option<&Head>,
) -> Result<(Vec<Appended>, Head), Failure> {
    let result = transaction(client, base, batch, queue, from).await;
    if result.is_err() && !client.is_closed() {
        // Whatever was left open ends here (a ROLLBACK after a COMMIT is a no-op).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The batch's transaction. Under the lock, in two round trips: BEGIN with the coordination
/// row's lock (`SELECT … FOR UPDATE`), then the writes with the COMMIT (pipelined: a failed
/// write makes the COMMIT a rollback). From `from`, the head this writer's last commit left, in
/// one: BEGIN, the row advanced only if it is still at `from` (that statement takes the lock, and
/// fails otherwise, which aborts the writes behind it: [`Failure::Moved`]), the writes, COMMIT.
/// Every state change goes through the row, so a row still at `from` also vouches for what the
/// batch read before it (the consents and mandates its projections needed).
async fn transaction(
    client: &Conn,
    base: &Base<'_>,
    batch: &mut Vec<Pending>,
    queue: &mut mpsc::Receiver<Pending>,
    from: Option<&Head>,
) -> Result<(Vec<Appended>, Head), Failure> {
    let Base {
        log,
        sealer,
        confirmed,
    } = *base;
    let head = match from {
        Some(head) => head.clone(),
        None => {
            // With the lock, in the same round trip: the newest tree this broker vouches for,
            // as stored now (see `Check`).
            let check = Check::of(confirmed.vouched().as_ref());
            let indices = check.indices();
            let edge_params: Params<'_> = &[(&indices, Type::INT8_ARRAY)];
            let (begun, row, stored) = futures::join!(
                client.batch_execute("BEGIN"),
                client.query_prepared(LOCK_LOG, &[], "lock the log"),
                client.query_prepared(READ_TREE, edge_params, "read the tree this broker knew")
            );
            begun.map_err(db("begin"))?;
            let row = row?;
            let knew = check.found(&stored?);
            let row = row.first().ok_or_else(|| {
                StoreError::Database("the log's coordination row is missing".into())
            })?;
            // While another broker held the lock, appends kept arriving: they join this
            // transaction rather than wait for the next one (brokers taking turns then commit
            // fewer, larger transactions).
            gather(batch, queue);
            let head = head_of(row)?;
            vouched(&head, log, &knew)?;
            head
        }
    };
    let batch = &*batch;
    let start_frontier = head.frontier.clone();
    let mut frontier = head.frontier;
    let mut next = head.size;
    let first_hash = tlog_tiles::stored_hash_index(0, next);
    let mut overlay = Overlay::default();
    let mut appended = Vec::new();
    let mut hashes = Vec::new();
    let mut exchanges: (Vec<String>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut granted: Vec<Consent> = Vec::new();
    let mut keys: Option<RecordedKeys> = None;
    let mut registry: Option<RecordedRegistry> = None;
    let mut requests: BTreeMap<(String, String), RequestUse> = BTreeMap::new();
    let mut fetches: BTreeMap<(String, String), RequestUse> = BTreeMap::new();
    for (record, entry) in batch.iter().flat_map(|p| p.records.iter()) {
        let entry = entry.clone();
        let subject = record
            .event
            .recorded_subject()
            .and_then(|s| sealer.reveal(s));
        let changes = loop {
            let Ok(changes) = projection::apply(&overlay, next, record.clone(), subject.clone());
            let misses = overlay.take_misses();
            if misses.is_empty() {
                break changes;
            }
            overlay.load(client, misses).await?;
        };
        for change in changes {
            match &change {
                Change::ConsentGranted(c) => granted.push(c.clone()),
                Change::RequestUsed {
                    actor,
                    request_id,
                    used,
                } => {
                    requests.insert((actor.clone(), request_id.clone()), used.clone());
                }
                Change::FetchRequestUsed {
                    actor,
                    request_id,
                    used,
                } => {
                    let key = (actor.clone(), projection::fetch_request_key(request_id));
                    fetches.entry(key).or_insert_with(|| used.clone());
                }
                Change::KeysRecorded { entry, ids } => {
                    keys = Some(RecordedKeys {
                        entry: *entry,
                        ids: ids.clone(),
                    });
                }
                Change::RegistryRecorded(recorded) => registry = Some(recorded.clone()),
                _ => {}
            }
            overlay.write(change);
        }
        if matches!(record.event, Event::Exchange(_))
            && let Some(subject) = subject
        {
            exchanges.0.push(subject);
            exchanges.1.push(i64::try_from(next).unwrap_or(i64::MAX));
        }
        crate::tree::push_leaf(&mut frontier, next, &entry, &mut hashes);
        appended.push((next, entry));
        next += 1;
    }

    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let indices: Vec<i64> = appended.iter().map(|(i, _)| int(*i)).collect();
    let entries: Vec<&[u8]> = appended.iter().map(|(_, e)| e.as_slice()).collect();
    // The batch's hashes, one run from the stored index `first_hash` (see the schema).
    let first_hash_row = int(first_hash);
    let hash_bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
    // The consents and mandates as this batch left them, one row each.
    let touched_consents: Vec<&Consent> = overlay
        .models
        .consents
        .values()
        .filter(|c| overlay.changed_consents.contains(&c.id))
        .collect();
    let consent_rows = (
        touched_consents
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>(),
        touched_consents
            .iter()
            .map(|c| c.subject.clone())
            .collect::<Vec<_>>(),
        touched_consents
            .iter()
            .map(|c| c.mandate_id.clone())
            .collect::<Vec<_>>(),
        touched_consents.iter().map(json).collect::<Vec<_>>(),
    );
    let mut scopes: [Vec<String>; 5] = Default::default();
    let mut parties: [Vec<String>; 3] = Default::default();
    for c in &granted {
        for ty in &c.attestation_types {
            let row = [&c.subject, &c.consumer, ty, &c.purpose, &c.id];
            for (column, value) in scopes.iter_mut().zip(row) {
                column.push(value.clone());
            }
        }
        for party in [&c.participant, &c.consumer] {
            for (column, value) in parties.iter_mut().zip([party, &c.subject, &c.id]) {
                column.push(value.clone());
            }
        }
    }
    let mandates: Vec<&Mandate> = overlay
        .models
        .mandates
        .values()
        .filter(|m| overlay.changed_mandates.contains(&m.id))
        .collect();
    let mandate_rows = (
        mandates.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        mandates
            .iter()
            .map(|m| m.subject.clone())
            .collect::<Vec<_>>(),
        mandates
            .iter()
            .map(|m| m.structure.clone())
            .collect::<Vec<_>>(),
        mandates.iter().map(json).collect::<Vec<_>>(),
    );
    let request_rows = |uses: &BTreeMap<(String, String), RequestUse>| {
        let mut columns: [Vec<String>; 4] = Default::default();
        for ((actor, id), used) in uses {
            let row = [actor, id, &used.fingerprint, &used.result];
            for (column, value) in columns.iter_mut().zip(row) {
                column.push(value.clone());
            }
        }
        columns
    };
    let (requests, fetches) = (request_rows(&requests), request_rows(&fetches));
    let meta: Vec<(&str, serde_json::Value)> = [
        keys.map(|k| ("recorded_keys", json(&k))),
        registry.map(|r| ("recorded_registry", json(&r))),
    ]
    .into_iter()
    .flatten()
    .collect();

    // Each person whose consents or mandates the batch changes, and each request id it records,
    // locked (shared) to the commit's end: an act about them on another broker waits for it,
    // even if this broker's own hold on them ends first (see `serialise`).
    let mut committing: Vec<i64> = touched_consents
        .iter()
        .map(|c| crate::person_key(&c.subject))
        .chain(mandates.iter().map(|m| crate::person_key(&m.subject)))
        .chain(
            requests[0]
                .iter()
                .zip(&requests[1])
                .map(|(actor, request_id)| crate::request_key(actor, request_id)),
        )
        .map(|key| serialise::committing(&key))
        .collect();
    committing.sort_unstable();
    committing.dedup();

    let mut writes: Vec<futures::future::BoxFuture<'_, Result<u64, StoreError>>> = Vec::new();
    let t = client;
    if !committing.is_empty() {
        let committing = &committing;
        writes.push(Box::pin(async move {
            t.execute_prepared(LOCK_COMMITTING, &[(committing, Type::INT8_ARRAY)])
                .await
        }));
    }
    if !consent_rows.0.is_empty() {
        writes.push(Box::pin(async move {
            t.execute_prepared(
                UPSERT_CONSENTS,
                &[
                    (&consent_rows.0, Type::TEXT_ARRAY),
                    (&consent_rows.1, Type::TEXT_ARRAY),
                    (&consent_rows.2, Type::TEXT_ARRAY),
                    (&consent_rows.3, Type::JSONB_ARRAY),
                ],
            )
            .await
        }));
    }
    if !scopes[0].is_empty() {
        writes.push(Box::pin(async move {
            t.execute_prepared(
                INSERT_SCOPES,
                &[
                    (&scopes[0], Type::TEXT_ARRAY),
                    (&scopes[1], Type::TEXT_ARRAY),
                    (&scopes[2], Type::TEXT_ARRAY),
                    (&scopes[3], Type::TEXT_ARRAY),
                    (&scopes[4], Type::TEXT_ARRAY),
                ],
            )
            .await
        }));
    }
    if !parties[0].is_empty() {
        writes.push(Box::pin(async move {
            t.execute_prepared(
                INSERT_PARTIES,
                &[
                    (&parties[0], Type::TEXT_ARRAY),
                    (&parties[1], Type::TEXT_ARRAY),
                    (&parties[2], Type::TEXT_ARRAY),
                ],
            )
            .await
        }));
    }
    if !mandate_rows.0.is_empty() {
        writes.push(Box::pin(async move {
            t.execute_prepared(
                UPSERT_MANDATES,
                &[
                    (&mandate_rows.0, Type::TEXT_ARRAY),
                    (&mandate_rows.1, Type::TEXT_ARRAY),
                    (&mandate_rows.2, Type::TEXT_ARRAY),
                    (&mandate_rows.3, Type::JSONB_ARRAY),
                ],
            )
            .await
        }));
    }
    for (columns, sql) in [(&requests, REQUESTS_REPLACE), (&fetches, REQUESTS_KEEP)] {
        if columns[0].is_empty() {
            continue;
        }
        writes.push(Box::pin(async move {
            t.execute_prepared(
                sql,
                &[
                    (&columns[0], Type::TEXT_ARRAY),
                    (&columns[1], Type::TEXT_ARRAY),
                    (&columns[2], Type::TEXT_ARRAY),
                    (&columns[3], Type::TEXT_ARRAY),
                ],
            )
            .await
        }));
    }
    for (name, value) in &meta {
        writes.push(Box::pin(async move {
            t.execute_prepared(UPSERT_META, &[(name, Type::TEXT), (value, Type::JSONB)])
                .await
        }));
    }
    let size = next;
    let note = log.sign(size, frontier_root(&frontier));
    let frontier_bytes = encode_frontier(&frontier);
    let (size_row, was_row) = (int(size), int(head.size));
    let begin = async {
        match from {
            Some(_) => client.batch_execute("BEGIN").await.map_err(db("begin")),
            None => Ok(()),
        }
    };
    // First after BEGIN: from `from`, it takes the row's lock, and a row moved aborts all. The
    // entries, their hashes and the exchanges' chain go in the same statement: each statement
    // is a message the backend executes and answers on its own.
    let advance_params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 11] = [
        (&was_row, Type::INT8),
        (&size_row, Type::INT8),
        (&frontier_bytes, Type::BYTEA),
        (&note, Type::TEXT),
        (&indices, Type::INT8_ARRAY),
        (&entries, Type::BYTEA_ARRAY),
        (&first_hash_row, Type::INT8),
        (&hash_bytes, Type::BYTEA),
        (&exchanges.0, Type::TEXT_ARRAY),
        (&exchanges.1, Type::INT8_ARRAY),
        (&head.checkpoint, Type::TEXT),
    ];
    let advance = client.query_prepared(ADVANCE_LOG, &advance_params, "advance the log");
    // After the writes (the people's `committing` locks first among them), before the COMMIT:
    // the acts' holds still stand (see `serialise`).
    let holds = serialise::BatchHolds::of(batch.iter().map(|p| p.hold.as_deref()));
    let check = async {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        client
            .query_prepared(
                serialise::CHECK_HOLDS,
                &holds.params(),
                "check the acts' holds",
            )
            .await
    };
    let warned = client.warnings();
    // Sent together with the COMMIT: one round trip. Never cancelled (see the module): the
    // caller may stop waiting, this task does not.
    let (begun, advanced, written, held, committed) = futures::join!(
        begin,
        advance,
        futures::future::try_join_all(writes),
        check,
        client.batch_execute("COMMIT")
    );
    begun?;
    if let Err(e) = advanced {
        // The server refused the row's advance (or the inserts made with it): the transaction
        // was aborted, its COMMIT rolled it back. From `from`, the row had moved (or the lock
        // path will report what it is).
        return Err(if from.is_some() && !client.is_closed() {
            Failure::Moved
        } else {
            Failure::Failed(e)
        });
    }
    written?;
    if let Err(e) = held {
        // Aborted by the check (its COMMIT a rollback): the appends whose hold ended go.
        return Err(if client.is_closed() {
            Failure::Failed(e)
        } else {
            Failure::HoldsLost(e)
        });
    }
    committed.map_err(db("commit"))?;
    if client.warnings() != warned {
        // A COMMIT whose wait for the standby was cancelled (an administrator's
        // `pg_cancel_backend`) succeeds with a WARNING: on the primary alone, so not
        // acknowledged. The next batch reads the row under the lock: from this primary, its
        // commit, once confirmed, confirms this one (WAL reaches a standby in order); after a
        // failover, from the new primary, which may not have it.
        return Err(Failure::Failed(StoreError::Database(
            "the database committed the batch without confirming it on a synchronous standby \
             (it sent a warning, logged above): not acknowledged"
                .into(),
        )));
    }
    let appended = prove(appended, size, &note, &start_frontier, first_hash, &hashes);
    Ok((
        appended,
        Head {
            size,
            frontier,
            checkpoint: note,
        },
    ))
}

/// Each appended entry with its inclusion proof in the tree of `size` leaves just committed:
/// the proof's hashes are the frontier's before the batch and the batch's own (none is read);
/// an entry whose proof would need another is returned without one (its receipt then reads).
fn prove(
    appended: Vec<(u64, Vec<u8>)>,
    size: u64,
    note: &str,
    frontier: &[(u8, u64, Hash)],
    first_hash: u64,
    hashes: &[Hash],
) -> Vec<Appended> {
    let reader = Fetched::default();
    {
        let mut known = reader.known.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(frontier.iter().map(|(_, index, hash)| (*index, *hash)));
        known.extend((first_hash..).zip(hashes.iter().copied()));
    }
    appended
        .into_iter()
        .map(|(seq, entry)| {
            let proven = tlog_tiles::prove_record(size, seq, &reader)
                .ok()
                .map(|proof| Proven {
                    tree_size: size,
                    checkpoint: note.to_string(),
                    inclusion_proof: proof.into_iter().map(|h| h.0).collect(),
                });
            reader.take_missing();
            Appended { seq, entry, proven }
        })
        .collect()
}

/// The writer's statements, prepared on each of its connections before any batch: a batch's
/// writes are pipelined with its COMMIT, so none may wait for a prepare.
const UPSERT_CONSENTS: &str = "INSERT INTO unefois_consents (id, subject, mandate_id, body) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body";
const INSERT_SCOPES: &str = "INSERT INTO unefois_consent_scopes \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             ON CONFLICT DO NOTHING";
const INSERT_PARTIES: &str = "INSERT INTO unefois_consent_parties \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING";
const UPSERT_MANDATES: &str = "INSERT INTO unefois_mandates (id, subject, structure, body) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body";
const UPSERT_META: &str = "INSERT INTO unefois_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value";
/// An import into the database that did not finish ([`Postgres::import`]).
#[derive(Debug, serde::Deserialize)]
pub struct UnfinishedImport {
    /// Entries of the log being imported.
    pub entries: u64,
    /// Its checkpoint, which the copy must reach.
    pub checkpoint: String,
}

/// The row advanced from the size `$1` the batch started from, and the batch's entries, run of
/// tree hashes and exchanges inserted, only once the row has advanced (each insert reads
/// `advanced`). No row at that size (another broker appended since) inserts nothing and
/// divides by zero, which aborts the transaction and the writes in it.
const ADVANCE_LOG: &str = "WITH advanced AS (UPDATE unefois_log \
             SET size = $2, frontier = $3, checkpoint = $4 WHERE size = $1 AND checkpoint = $11 \
             RETURNING size), \
             entries AS (INSERT INTO unefois_entries (idx, entry) \
             SELECT * FROM unnest($5::bigint[], $6::bytea[]) WHERE EXISTS (SELECT FROM advanced)), \
             tree AS (INSERT INTO unefois_tree_runs (first, hashes) \
             SELECT $7, $8 WHERE length($8) > 0 AND EXISTS (SELECT FROM advanced)), \
             exchanges AS (INSERT INTO unefois_exchanges (subject, idx) \
             SELECT * FROM unnest($9::text[], $10::bigint[]) WHERE EXISTS (SELECT FROM advanced) \
             ON CONFLICT DO NOTHING) \
             SELECT 1 / count(*) FROM advanced";

const WRITES: &[(&str, &[Type])] = &[
    (serialise::CHECK_HOLDS, serialise::HOLDS_TYPES),
    (
        UPSERT_CONSENTS,
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::JSONB_ARRAY,
        ],
    ),
    (
        INSERT_SCOPES,
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
        ],
    ),
    (
        INSERT_PARTIES,
        &[Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY],
    ),
    (
        UPSERT_MANDATES,
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::JSONB_ARRAY,
        ],
    ),
    (UPSERT_META, &[Type::TEXT, Type::JSONB]),
    (
        ADVANCE_LOG,
        &[
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
            Type::TEXT,
            Type::INT8_ARRAY,
            Type::BYTEA_ARRAY,
            Type::INT8,
            Type::BYTEA,
            Type::TEXT_ARRAY,
            Type::INT8_ARRAY,
            Type::TEXT,
        ],
    ),
    (
        REQUESTS_REPLACE,
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
        ],
    ),
    (
        REQUESTS_KEEP,
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
        ],
    ),
    (LOCK_LOG, &[]),
    (READ_TREE, &[Type::INT8_ARRAY]),
    (LOCK_COMMITTING, &[Type::INT8_ARRAY]),
];

/// The people whose consents or mandates a batch changes (`serialise::committing`), in order.
const LOCK_COMMITTING: &str =
    "SELECT count(pg_advisory_xact_lock_shared(id)) FROM unnest($1::bigint[]) AS id";

const LOCK_LOG: &str = "SELECT size, frontier, checkpoint FROM unefois_log FOR UPDATE";

/// A consent or mandate request id: the latest use replaces an earlier one.
const REQUESTS_REPLACE: &str = "INSERT INTO unefois_requests (actor, request_id, fingerprint, result) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
     ON CONFLICT (actor, request_id) DO UPDATE \
     SET fingerprint = EXCLUDED.fingerprint, result = EXCLUDED.result";
/// A Fetch's request id: the first exchange keeps it.
const REQUESTS_KEEP: &str = "INSERT INTO unefois_requests (actor, request_id, fingerprint, result) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING";

fn consent_row(row: &tokio_postgres::Row) -> Result<(String, Consent), StoreError> {
    let c: Consent = body(row)?;
    Ok((c.id.clone(), c))
}

fn mandate_row(row: &tokio_postgres::Row) -> Result<(String, Mandate), StoreError> {
    let m: Mandate = body(row)?;
    Ok((m.id.clone(), m))
}

#[async_trait::async_trait]
impl Store for Postgres {
    async fn recorded_keys(&self) -> Result<Option<RecordedKeys>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM unefois_meta WHERE name = 'recorded_keys'",
                &[],
            )
            .await
            .map_err(db("read the recorded keys"))?;
        row.map(|row| body(&row)).transpose()
    }

    async fn recorded_registry(&self) -> Result<Option<RecordedRegistry>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM unefois_meta WHERE name = 'recorded_registry'",
                &[],
            )
            .await
            .map_err(db("read the recorded registry"))?;
        row.map(|row| body(&row)).transpose()
    }

    async fn append_entry(&self, record: Record) -> Result<Appended, StoreError> {
        self.append_encoded(vec![record])
            .await?
            .pop()
            .ok_or(StoreError::Closed)
    }

    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, StoreError> {
        let appended = self.append_encoded(records).await?;
        Ok(appended.into_iter().map(|a| a.seq).collect())
    }

    async fn consent(&self, id: &str) -> Result<Option<Consent>, StoreError> {
        let id = id.to_string();
        let row = self
            .client()
            .await?
            .query_typed_opt(
                "SELECT body FROM unefois_consents WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .await
            .map_err(db("read a consent"))?;
        row.map(|row| body(&row)).transpose()
    }

    async fn consents_of_after<'a>(
        &'a self,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        Ok(self.paged(
            "SELECT body FROM unefois_consents WHERE subject = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
            subject.to_string(),
            after.to_string(),
            consent_row,
        ))
    }

    async fn consents_seen_by_after<'a>(
        &'a self,
        party: &str,
        subject: &str,
        after: &str,
    ) -> Result<Items<'a, Consent>, StoreError> {
        // One text key for the paged query: party and subject, apart (a party id has no NUL).
        Ok(self.paged(
            "SELECT c.body FROM unefois_consent_parties p JOIN unefois_consents c \
             ON c.id = p.consent_id \
             WHERE p.party = split_part($1, chr(1), 1) AND p.subject = split_part($1, chr(1), 2) \
             AND p.consent_id > $2 ORDER BY p.consent_id LIMIT $3",
            format!("{party}\u{1}{subject}"),
            after.to_string(),
            consent_row,
        ))
    }

    async fn consents_under_mandate(&self, mandate_id: &str) -> Result<Vec<Consent>, StoreError> {
        let id = mandate_id.to_string();
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT body FROM unefois_consents WHERE mandate_id = $1 ORDER BY id",
                &[(&id, Type::TEXT)],
            )
            .await
            .map_err(db("read consents under a mandate"))?;
        rows.iter().map(body).collect()
    }

    async fn consents_for(
        &self,
        subject: &str,
        consumer: &str,
        attestation_type: &str,
        purpose: &str,
    ) -> Result<Vec<Consent>, StoreError> {
        let scope = [subject, consumer, attestation_type, purpose].map(str::to_string);
        self.lookups.consents(scope).await
    }

    async fn mandate(&self, id: &str) -> Result<Option<Mandate>, StoreError> {
        let id = id.to_string();
        let row = self
            .client()
            .await?
            .query_typed_opt(
                "SELECT body FROM unefois_mandates WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .await
            .map_err(db("read a mandate"))?;
        row.map(|row| body(&row)).transpose()
    }

    async fn mandates_after<'a>(
        &'a self,
        of: MandatesOf<'_>,
        after: &str,
    ) -> Result<Items<'a, Mandate>, StoreError> {
        let (sql, key) = match of {
            MandatesOf::Subject(subject) => (
                "SELECT body FROM unefois_mandates WHERE subject = $1 AND id > $2 \
                 ORDER BY id LIMIT $3",
                subject,
            ),
            MandatesOf::Structure(structure) => (
                "SELECT body FROM unefois_mandates WHERE structure = $1 AND id > $2 \
                 ORDER BY id LIMIT $3",
                structure,
            ),
        };
        Ok(self.paged(sql, key.to_string(), after.to_string(), mandate_row))
    }

    async fn request_use(
        &self,
        actor: &str,
        request_id: &str,
    ) -> Result<Option<RequestUse>, StoreError> {
        let key = [actor, request_id].map(str::to_string);
        let row = self
            .client()
            .await?
            .query_typed_opt(
                "SELECT fingerprint, result FROM unefois_requests \
                 WHERE actor = $1 AND request_id = $2",
                &[(&key[0], Type::TEXT), (&key[1], Type::TEXT)],
            )
            .await
            .map_err(db("read a request id"))?;
        Ok(row.map(|row| RequestUse {
            fingerprint: row.get(0),
            result: row.get(1),
        }))
    }

    async fn reads_durable(&self) -> Result<(), StoreError> {
        confirmed::all_flushed(&self.reads).await
    }

    async fn serialise(&self, keys: &[&str]) -> Result<crate::Serialised, StoreError> {
        self.locks.hold(keys).await
    }

    async fn settled(&self) {
        settled(&self.writer).await;
    }

    async fn spend_act(
        &self,
        token: &Verified,
        now: i64,
    ) -> Result<Result<(), IdentityError>, StoreError> {
        self.acts.spend(token, now).await
    }

    async fn share_limits(
        &self,
        broker: &str,
        mine: &crate::LimitUse,
    ) -> Result<Option<crate::LimitUse>, StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.limits.share(broker, mine, now).await.map(Some)
    }

    async fn exchanges_about(
        &self,
        subject: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let subject = subject.to_string();
        // Only exchanges a standby has (see `confirmed`).
        let before = before.unwrap_or(u64::MAX).min(self.tip().await?.size);
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT idx FROM unefois_exchanges WHERE subject = $1 AND idx < $2 \
                 ORDER BY idx DESC LIMIT $3",
                &[
                    (&subject, Type::TEXT),
                    (&before, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .map_err(db("read a person's exchanges"))?;
        Ok(rows
            .iter()
            .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or_default())
            .collect())
    }

    async fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        // Only entries a standby has (see `confirmed`); one in the log but not yet confirmed
        // to this broker is unavailable for now, not missing.
        if index >= self.confirmed.known_size()
            && index >= self.served_for(index.saturating_add(1)).await?.size
        {
            return Ok(None);
        }
        let Ok(index) = i64::try_from(index) else {
            return Ok(None);
        };
        let row = self
            .client()
            .await?
            .query_typed_opt(
                "SELECT entry FROM unefois_entries WHERE idx = $1",
                &[(&index, Type::INT8)],
            )
            .await
            .map_err(db("read an entry"))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn entries_from(&self, start: u64) -> Items<'_, (u64, Vec<u8>)> {
        let start = i64::try_from(start).unwrap_or(i64::MAX);
        // The state: where the next page starts, the page, whether it was the last, and the
        // entries a standby had when the first page was read (see `confirmed`).
        let state = (start, Vec::new().into_iter(), false, None::<i64>);
        futures::stream::unfold(state, move |(from, mut page, done, end)| async move {
            if let Some(item) = page.next() {
                return Some((Ok(item), (from, page, done, end)));
            }
            if done {
                return None;
            }
            let failed = |e| Some((Err(e), (from, Vec::new().into_iter(), true, end)));
            let end = match end {
                Some(end) => end,
                None => match self.tip().await {
                    Ok(tip) => i64::try_from(tip.size).unwrap_or(i64::MAX),
                    Err(e) => return failed(e),
                },
            };
            let rows = match self.client().await {
                Ok(client) => client
                    .query_typed(
                        "SELECT idx, entry FROM unefois_entries WHERE idx >= $1 AND idx < $3 \
                         ORDER BY idx LIMIT $2",
                        &[
                            (&from, Type::INT8),
                            (&PAGE_ROWS, Type::INT8),
                            (&end, Type::INT8),
                        ],
                    )
                    .await
                    .map_err(db("read entries")),
                Err(e) => Err(e),
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => return failed(e),
            };
            let done = (rows.len() as i64) < PAGE_ROWS;
            let items: Vec<(u64, Vec<u8>)> = rows
                .iter()
                .map(|r| {
                    (
                        u64::try_from(r.get::<_, i64>(0)).unwrap_or_default(),
                        r.get(1),
                    )
                })
                .collect();
            let from = items
                .last()
                .map_or(from, |(i, _)| i64::try_from(*i + 1).unwrap_or(i64::MAX));
            let mut page = items.into_iter();
            let first = page.next()?;
            Some((Ok(first), (from, page, done, Some(end))))
        })
        .boxed()
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let tip = self.tip().await?;
        Ok((tip.size > 0).then_some((tip.size, tip.checkpoint)))
    }

    /// A smaller tree's checkpoint is signed from the stored hashes, which the database's
    /// administrator can change: its root is signed only once a consistency proof from it, out
    /// of the same hashes, leads to the root of the latest checkpoint this key signed (a signed
    /// fork otherwise).
    async fn checkpoint_at(&self, size: u64) -> Result<String, StoreError> {
        let tip = self.served_for(size).await?;
        let latest = (tip.size > 0).then(|| (tip.size, tip.checkpoint.clone()));
        if let Some(note) = super::kept_checkpoint(latest, size)? {
            return Ok(note);
        }
        let tip_root = unefois_tlog::receipt::checkpoint_root(&tip.checkpoint)
            .filter(|root| self.log.sign(tip.size, *root) == tip.checkpoint);
        let (root, proof) = self
            .with_hashes(|reader| {
                Ok((
                    tlog_tiles::tree_hash(size, reader)?,
                    tlog_tiles::prove_tree(tip.size, size, reader)?,
                ))
            })
            .await?;
        let consistent = tip_root.is_some_and(|tip_root| {
            tlog_tiles::check_tree(&proof, tip.size, Hash(tip_root), size, root).is_ok()
        });
        if !consistent {
            return Err(StoreError::Database(format!(
                "the hashes stored in the database for a tree of {size} entries do not lead to \
                 the latest checkpoint signed ({} entries): altered in the database; not signed",
                tip.size
            )));
        }
        Ok(self.log.sign(size, root.0))
    }

    async fn inclusion_proof(&self, leaf: u64, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.within(size).await?;
        if leaf >= size {
            return Err(StoreError::OutOfRange(format!(
                "leaf {leaf} is not in a tree of {size} entries"
            )));
        }
        let proof = self
            .with_hashes(|reader| tlog_tiles::prove_record(size, leaf, reader))
            .await?;
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    async fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.within(second).await?;
        if first == 0 || first > second {
            return Err(StoreError::OutOfRange(format!(
                "no consistency proof from {first} to {second} entries"
            )));
        }
        let proof = self
            .with_hashes(|reader| tlog_tiles::prove_tree(second, first, reader))
            .await?;
        Ok(proof.into_iter().map(|h| h.0).collect())
    }

    fn subject_of(&self, event: &Event) -> Option<String> {
        event.recorded_subject().and_then(|s| self.sealer.reveal(s))
    }

    async fn health(&self) -> StoreHealth {
        let at = self.location();
        let probe = async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                     (SELECT count(*) FROM pg_stat_replication \
                      WHERE sync_state IN ('sync', 'quorum')), \
                     current_setting('synchronous_standby_names'), \
                     (SELECT array_agg(version ORDER BY version) FROM unefois_schema), \
                     (SELECT array_agg(coalesce((to_jsonb(s) ->> 'contract')::boolean, false) \
                      ORDER BY version) FROM unefois_schema AS s)",
                    &[],
                )
                .await
                .map_err(db("probe"))?;
            let versions: Vec<i32> = row.get::<_, Option<Vec<i32>>>(3).unwrap_or_default();
            let contracts: Vec<bool> = row.get::<_, Option<Vec<bool>>>(4).unwrap_or_default();
            let applied: Vec<schema::Applied> = versions.into_iter().zip(contracts).collect();
            Ok::<_, StoreError>((
                row.get::<_, bool>(0),
                row.get::<_, i64>(1),
                row.get::<_, String>(2),
                schema::behind(&applied).map(|behind| format!("; {behind}")),
            ))
        };
        let (ok, report, schema_behind) = match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
            Err(_) => (false, format!("no answer within {HEALTH_TIMEOUT:?}"), None),
            Ok(Err(e)) => (false, e.to_string(), None),
            Ok(Ok((true, _, _, _))) => (
                false,
                "connected to a standby, not the primary".into(),
                None,
            ),
            Ok(Ok((false, _, names, behind))) if names.trim().is_empty() => (
                true,
                "primary; synchronous_standby_names is empty: a commit is on one machine only"
                    .into(),
                behind,
            ),
            Ok(Ok((false, 0, _, behind))) => (
                true,
                "primary; no synchronous standby in sync: writes wait for one (reads are served)"
                    .into(),
                behind,
            ),
            Ok(Ok((false, n, _, behind))) => (
                true,
                format!("primary; {n} synchronous standby in sync"),
                behind,
            ),
        };
        let not_kept = match &self.remembered {
            Some((remembered, _)) if remembered.failing() => format!(
                "; the newest checkpoint known is not kept in {} (see the log): after a restart \
                 this broker will not see a log rolled back behind it",
                remembered.path().display()
            ),
            _ => String::new(),
        };
        StoreHealth {
            ok,
            report: format!(
                "store: postgresql {at}: {report}{}{not_kept}",
                schema_behind.unwrap_or_default()
            ),
        }
    }

    fn log_vkey(&self) -> &str {
        self.log.vkey()
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Every append queued before is committed or answered, within the append timeout (the
        // queue full behind a stuck commit included).
        let _ = tokio::time::timeout(self.append_timeout, async {
            if let Some(answer) = barrier(&self.writer).await {
                let _ = answer.await;
            }
        })
        .await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
        }
        if let Some((remembered, keeping)) = &self.remembered {
            keeping.abort();
            let (remembered, confirmed) = (remembered.clone(), self.confirmed.clone());
            let _ =
                tokio::task::spawn_blocking(move || remembered.keep_newest(&confirmed, 0)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_signer::TestSigner;

    /// The head of a log of `size` entries, each its index as bytes (from `from` on, the index
    /// plus 100: another history), signed by `log`.
    fn head_of(log: &TestSigner, size: u64, from: u64) -> Head {
        let (mut frontier, mut hashes) = (Vec::new(), Vec::new());
        for i in 0..size {
            let leaf = if i < from { i } else { i + 100 };
            crate::tree::push_leaf(&mut frontier, i, &leaf.to_be_bytes(), &mut hashes);
        }
        let checkpoint = match size {
            0 => String::new(),
            _ => log.sign(size, frontier_root(&frontier)),
        };
        Head {
            size,
            frontier,
            checkpoint,
        }
    }

    fn head(log: &TestSigner, size: u64) -> Head {
        head_of(log, size, u64::MAX)
    }

    #[test]
    fn the_right_edge_of_a_tree_is_where_its_frontier_is_stored() {
        let log = TestSigner::from_seed(&[7; 32]);
        for size in 0..70 {
            let stored: Vec<(u8, u64)> = head(&log, size)
                .frontier
                .iter()
                .map(|&(level, index, _)| (level, index))
                .collect();
            assert_eq!(edge(size), stored, "size {size}");
        }
    }

    #[test]
    fn a_row_is_extended_only_signed_over_its_tree_and_not_gone_back() {
        let log = TestSigner::from_seed(&[7; 32]);
        let other = TestSigner::from_seed(&[8; 32]);
        let forged = |mut h: Head| {
            h.checkpoint.push('x');
            h
        };
        let other_tree = |mut h: Head| {
            h.frontier = head(&log, 4).frontier;
            h
        };
        // The broker knew the first `size` entries of the first history; the database now
        // stores the history that differs from entry `from` on.
        let knew = |size: u64, from: u64| Knew {
            size,
            expected: Hash(frontier_root(&head(&log, size).frontier)),
            read: edge(size).len(),
            stored: head_of(&log, size, from).frontier,
        };
        // The same, only the rightmost subtree of the head it knew read (the writer's heads).
        let knew_last = |size: u64, from: u64| {
            let last = |h: Head| h.frontier.last().copied().into_iter().collect::<Vec<_>>();
            Knew {
                size,
                expected: last(head(&log, size))[0].2,
                read: 1,
                stored: last(head_of(&log, size, from)),
            }
        };
        let same = u64::MAX;
        let cases: Vec<(&str, Head, Knew, Option<&str>)> = vec![
            ("as left", head(&log, 5), knew(5, same), None),
            ("grown since", head(&log, 7), knew(5, same), None),
            ("empty", head(&log, 0), knew(0, same), None),
            (
                "rolled back",
                head(&log, 3),
                knew(5, same),
                Some("went back from 5 to 3"),
            ),
            (
                "emptied",
                head(&log, 0),
                knew(2, same),
                Some("went back from 2 to 0"),
            ),
            (
                "checkpoint altered",
                forged(head(&log, 5)),
                knew(5, same),
                Some("not signed"),
            ),
            (
                "frontier altered",
                other_tree(head(&log, 5)),
                knew(5, same),
                Some("not signed"),
            ),
            (
                "another key",
                head(&other, 5),
                knew(5, same),
                Some("not signed"),
            ),
            (
                "rolled back to 3, then written again past 5",
                head_of(&log, 7, 3),
                knew(5, 3),
                Some("no longer holds the 5 entries"),
            ),
            (
                "written again from 5 on only",
                head_of(&log, 7, 5),
                knew(5, 5),
                None,
            ),
            (
                "as left, its last subtree",
                head(&log, 7),
                knew_last(5, same),
                None,
            ),
            (
                "rolled back to 4, written again past 6, its last subtree",
                head_of(&log, 9, 4),
                knew_last(6, 4),
                Some("no longer holds the 6 entries"),
            ),
            (
                "rolled back to 3, written again past 4, its last subtree",
                head_of(&log, 9, 3),
                knew_last(4, 3),
                Some("no longer holds the 4 entries"),
            ),
            (
                "its stored hashes gone",
                head(&log, 7),
                Knew {
                    stored: Vec::new(),
                    ..knew(5, same)
                },
                Some("no longer holds the 5 entries"),
            ),
        ];
        for (case, head, knew, refused) in cases {
            let got = vouched(&head, &log, &knew).map_err(|e| e.to_string());
            match refused {
                None => assert!(got.is_ok(), "{case}: {got:?}"),
                Some(why) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(why)),
                    "{case}: {got:?}"
                ),
            }
        }
    }
}

//! Persistent state in one SQLite file: signed labels, the label history, attestations with
//! their latest verification report, record revisions, account status and the Jetstream cursor.
//!
//! This is the only module that writes SQL. Its API speaks in domain terms (labels,
//! attestations, a DID's state) and every group of writes that belongs together is one
//! transaction. The database runs in WAL mode, so readers never block the writer and a killed
//! process loses nothing that was committed (`synchronous = NORMAL` is durable against process
//! crashes; only an OS crash can lose the last transactions).
//!
//! Connections: one writer behind a `std::sync::Mutex` (never held across `.await`), a
//! small pool of read connections, and a smaller pool of lookup connections for the indexed
//! lookups the server answers inline (`lookup`: they map the file, keep room for the index's
//! interior pages and keep their read transaction while nothing commits). Read
//! connections enable SQLite's query planner stability guarantee (QPSG): without it rusqlite's
//! statement cache re-prepares every statement whose plan looked at a bound value, which halves
//! lookup throughput (`docs/performance.md` §2).
//!
//! Methods are synchronous; async callers go through [`Store::call`], which runs them on the
//! blocking pool so the runtime's workers never wait on disk or locks.

mod attestations;
mod console;
mod labels;
mod lookup;
mod mirror;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

pub use attestations::{
    Account, Attestation, Changes, Committed, DidState, MAX_REFUSALS, RecordRev, Refusal,
};
pub use console::{HISTORY_KEPT, VerdictChange};
pub use labels::{LabelQuery, Rewritten, StoredLabel, UriPattern, Watcher};

/// How long a connection waits for another writer (e.g. the `label` CLI) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept for reuse; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 8;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The database could not be opened.
    #[error("cannot open database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file was written by a newer version of the labeler.
    #[error(
        "database schema version {found} is newer than this labeler supports ({supported}); \
         upgrade the labeler"
    )]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A stored value could not be decoded (a corrupted or hand-edited row).
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
    /// A mirrored label (or cursor) does not come after what the mirror already holds:
    /// nothing was written.
    #[error("mirrored seq {seq} does not come after seq {after}")]
    OutOfOrder {
        /// The seq (or cursor) that was refused.
        seq: i64,
        /// The last seq already accepted.
        after: i64,
    },
    /// The database records a signing key: it belongs to a primary labeler, not a mirror.
    #[error("this database belongs to a labeler that signs with {key}, not to a mirror")]
    NotAMirror {
        /// The did:key it records.
        key: String,
    },
    /// Another process rotated the signing key: nothing was written; reload the key and
    /// sign again.
    #[error("the signing key was rotated (the active key is now {active}); reload it")]
    KeyRotated {
        /// The did:key now active.
        active: String,
    },
}

/// Handle to the database. Cheap to clone; all clones share the connections.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Read connections for the inline lookups ([`Store::lookup`]).
    lookups: lookup::Lookups,
    /// Bumped after every commit that wrote labels; the live feed watches it.
    commits: watch::Sender<u64>,
    /// Bumped after every commit that may have brought a re-check closer; the scheduler
    /// watches it, so a sooner re-check is not left waiting for the sweep's longest sleep.
    schedule: watch::Sender<u64>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let mut writer = open_conn(path, false)?;
        schema::migrate(&mut writer)?;
        let (commits, _) = watch::channel(0);
        let (schedule, _) = watch::channel(0);
        let journal: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let lookups = lookup::Lookups::new(path, journal.eq_ignore_ascii_case("wal"));
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                lookups,
                commits,
                schedule,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool. Use from async code for every store call.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// A receiver that changes after every commit of this process that wrote labels.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    /// A receiver that changes after every commit of this process that may have brought an
    /// attestation's next check closer.
    pub fn schedule_changes(&self) -> watch::Receiver<u64> {
        self.inner.schedule.subscribe()
    }

    fn notify_schedule(&self) {
        self.inner.schedule.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn notify_commit(&self) {
        self.inner.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Locks the writer. A poisoned lock only means another thread panicked mid-call; SQLite
    /// rolled its transaction back when the `Transaction` dropped, so the connection is sound.
    ///
    /// Idle lookup connections first end their read transactions ([`lookup`]), so the write
    /// finds no reader keeping the WAL from being reset.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.inner.lookups.release_idle();
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` with a pooled read connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let open = || open_conn(&self.inner.path, true);
        pooled(&self.inner.readers, MAX_IDLE_READERS, open, f)
    }

    /// Runs `f` with a pooled lookup connection ([`lookup`]): a read connection that maps
    /// the database file, has room in its page cache for the lookup index's interior pages
    /// and keeps its read transaction while nothing commits. For the short indexed reads the
    /// server answers inline on its workers. `f` must only read.
    fn lookup<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        self.inner.lookups.run(|| lookup::open(&self.inner.path), f)
    }

    /// Opens a dedicated read connection (for long backfills or change watching).
    fn open_reader(&self) -> Result<Connection, Error> {
        open_conn(&self.inner.path, true)
    }

    /// Sets the writing connection up for a stream of bulk writes (a mirror catching up):
    /// a page cache of `cache_mib` MiB (SQLite's default is 2 MiB) and a checkpoint every
    /// `checkpoint_mib` MiB of WAL (default about 4 MiB).
    ///
    /// Labels on random subjects land on random pages of two indexes of a million entries.
    /// With the defaults nearly every insert reads its index pages back from the OS
    /// (`pread`), and a checkpoint every few hundred labels writes and syncs those scattered
    /// pages again and again; both showed in the catch-up profile (`BENCHMARKS.md`,
    /// "Mirrors"). Readers are unaffected: they read the WAL like the main file.
    pub fn tune_for_bulk_writes(&self, cache_mib: u32, checkpoint_mib: u32) -> Result<(), Error> {
        let conn = self.writer();
        conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))?;
        // wal_autocheckpoint counts pages; the page size is read, not assumed.
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = i64::from(checkpoint_mib) * 1024 * 1024 / page.max(512);
        conn.query_row(&format!("PRAGMA wal_autocheckpoint = {pages}"), [], |_| {
            Ok(())
        })?;
        Ok(())
    }

    /// Cheap liveness probe for `/xrpc/_health`: reads the label sequence, so a missing,
    /// unreadable or corrupt database file fails it (`SELECT 1` never touches the file).
    pub fn ping(&self) -> Result<(), Error> {
        self.head_seq().map(drop)
    }

    /// `PRAGMA integrity_check`: `"ok"` or SQLite's list of problems.
    pub fn integrity_check(&self) -> Result<String, Error> {
        let conn = self.writer();
        let rows: Vec<String> = conn
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows.join("; "))
    }
}

/// Runs `f` with a connection from `pool` (or a new one from `open`), and puts it back while
/// fewer than `max_idle` wait there.
fn pooled<T>(
    pool: &Mutex<Vec<Connection>>,
    max_idle: usize,
    open: impl FnOnce() -> Result<Connection, Error>,
    f: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<T, Error> {
    let lock = || {
        pool.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let taken = lock().pop();
    let conn = match taken {
        Some(c) => c,
        None => open()?,
    };
    let out = f(&conn);
    let mut idle = lock();
    if idle.len() < max_idle {
        idle.push(conn);
    }
    out
}

/// Opens a connection with the pragmas every connection needs.
fn open_conn(path: &Path, reader: bool) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let open_err = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    if reader {
        // Readers never write; QPSG keeps cached statements from re-preparing (see module docs).
        conn.pragma_update(None, "query_only", true)?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
    } else {
        let mode = wal_mode(&conn).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Switches to WAL and returns the journal mode now in force. The switch needs an exclusive
/// lock and SQLite answers `SQLITE_BUSY` at once, without the busy handler, while another
/// connection creates the same file, so it is retried for up to [`BUSY_TIMEOUT`].
fn wal_mode(conn: &Connection) -> Result<String, rusqlite::Error> {
    const PAUSE: Duration = Duration::from_millis(10);
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(PAUSE);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;

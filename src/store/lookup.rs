//! Lookup connections: the read connections the server's inline exact-subject lookups run on,
//! tuned for short index probes and kept in a read transaction between them.
//!
//! An exact lookup is a handful of page reads, yet a read transaction around each one costs
//! about as much again: SQLite takes and drops a WAL read-mark lock (`fcntl` on the `-shm`
//! file), re-reads the wal-index header and re-validates its page cache on every statement
//! run in autocommit mode. A lookup connection instead keeps its read transaction open
//! between lookups for as long as that transaction's snapshot is the newest one, and starts
//! a new one as soon as anything commits, in this process or any other.
//!
//! "Nothing committed since" is read from the wal-index header in the `-shm` file
//! (<https://www.sqlite.org/walformat.html> §2.1 "The WAL-Index Header"): every commit
//! rewrites it (`mxFrame`, `iChange`, the frame checksums), and a writer writes its two copies
//! one after the other, so two equal copies are a settled header. The header is read just
//! *before* a transaction begins, so the transaction's snapshot is at least that new; while
//! the header still reads the same, no transaction has committed since and the snapshot is
//! the newest. Any doubt (the copies differ, a short read, an error) starts a new
//! transaction, which is what every lookup did before. So a lookup never answers from an older
//! state than an autocommit read would: a negation is served from the moment it commits.
//!
//! The `-shm` file read here is the one SQLite maps: this process's writer connection holds
//! it open for the store's whole life, so SQLite never deletes or re-creates it meanwhile
//! (it does so only when the last connection to the database closes).
//!
//! An idle connection's open transaction would keep the WAL from being reset after a
//! checkpoint, so every write of this process first ends the transactions of idle lookup
//! connections ([`Lookups::release_idle`]).
//!
//! Lookup connections also map the database file (`PRAGMA mmap_size`, [`MMAP_BYTES`]): an
//! index probe then reads its pages in place instead of copying each one out of the OS page
//! cache with `pread` into SQLite's own cache (`docs/performance.md`; BENCHMARKS.md "Read
//! path").

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use super::{Error, open_conn};

/// Idle lookup connections kept for reuse: about one per runtime worker thread answering
/// inline, with room for a burst.
const MAX_IDLE: usize = 4;

/// Bytes of the database file a lookup connection maps: SQLite's compile-time ceiling,
/// `SQLITE_MAX_MMAP_SIZE` (`0x7fff0000`, just under 2 GiB, on Linux). Pages beyond it are read
/// with `pread` into the page cache.
///
/// Mapped pages are the OS page cache itself, shared with every other reader of the file and
/// reclaimable like any cached file page; they show in the process's `RssFile`, not in its
/// private memory.
pub(super) const MMAP_BYTES: i64 = 0x7fff_0000;

/// Page cache of a lookup connection, in KiB (SQLite's default is 2 MiB).
///
/// An exact lookup descends the covering `labels_by_uri` index: at 1,000,000 labels its
/// entries are about 250 bytes, so its interior pages hold about 15 each and come to 3,800
/// pages (16 MB) over five levels. With the default cache only the top levels stay cached and
/// every lookup reads one or two interior pages from the OS besides its leaf; the `pread`
/// path (copy, page-cache lookup, syscall) was a third of the server's time under a batch
/// load (BENCHMARKS.md, "Read path"). With room for the interior pages a lookup reads one
/// page, its leaf: a batch of 50 DIDs took 13 % less server CPU than with the default cache
/// in an A/B on the bench machine. The cache fills only as pages are read (about 60 MB of
/// peak RSS under a sustained random load), and only these few connections have it:
/// backfills, scans and other reads keep the default. Since lookup connections map the file
/// ([`MMAP_BYTES`]) their pages come from the mapping instead and the cache stays
/// nearly empty; it still serves a database larger than the mapping.
pub(super) const LOOKUP_CACHE_KIB: i64 = 24 * 1024;

/// Opens a lookup connection for the database at `db`: a read connection with the larger
/// page cache and the mapping.
pub(super) fn open(db: &Path) -> Result<Connection, Error> {
    let conn = open_conn(db, true)?;
    conn.pragma_update(None, "cache_size", -LOOKUP_CACHE_KIB)?;
    // SQLite answers with the size it settled on; the value is not needed.
    conn.query_row(&format!("PRAGMA mmap_size = {MMAP_BYTES}"), [], |_| Ok(()))?;
    Ok(conn)
}

/// Bytes of the two copies of the wal-index header at the start of the `-shm` file.
const HEADER_BYTES: usize = 96;

/// The wal-index header: a settled copy, as read from the `-shm` file.
type Header = [u8; HEADER_BYTES / 2];

/// A lookup connection and the read transaction it may hold.
#[derive(Debug)]
pub(super) struct LookupConn {
    conn: Connection,
    /// The wal-index header read just before the open read transaction began; `None` when
    /// no transaction is held.
    held: Option<Header>,
}

impl LookupConn {
    /// Ends the held read transaction, if any. A failure drops the transaction's state all
    /// the same: the caller then discards the connection.
    fn release(&mut self) -> Result<(), Error> {
        if self.held.take().is_some() && !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(())
    }
}

/// The pool of lookup connections, and the `-shm` file that says when their transactions
/// went stale.
#[derive(Debug)]
pub(super) struct Lookups {
    idle: Mutex<Vec<LookupConn>>,
    /// `None` when the database is not in WAL mode (no wal-index): every lookup then runs in
    /// its own transaction.
    shm: Option<File>,
}

impl Lookups {
    /// The pool for the database at `db`, which the caller's writer connection has open,
    /// in WAL mode when `wal` (so `<db>-shm` exists and stays). Outside WAL mode a `-shm` file
    /// left from earlier says nothing, and a held read transaction would block writers: every
    /// lookup then runs in its own transaction.
    pub(super) fn new(db: &Path, wal: bool) -> Lookups {
        let mut shm_path = db.as_os_str().to_owned();
        shm_path.push("-shm");
        Lookups {
            idle: Mutex::new(Vec::new()),
            shm: wal.then(|| File::open(&shm_path).ok()).flatten(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LookupConn>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The wal-index header now, or `None` when it cannot be read settled.
    fn header(&self) -> Option<Header> {
        let shm = self.shm.as_ref()?;
        let mut buf = [0u8; HEADER_BYTES];
        shm.read_exact_at(&mut buf, 0).ok()?;
        let (first, second) = buf.split_at(HEADER_BYTES / 2);
        // `isInit` (byte 12) is set once the header is valid.
        (first == second && first[12] != 0).then(|| first.try_into().ok())?
    }

    /// Runs `f` on a lookup connection (from the pool, or a new one from `open`) within a
    /// read transaction whose snapshot is the newest.
    pub(super) fn run<T>(
        &self,
        open: impl FnOnce() -> Result<Connection, Error>,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let taken = self.lock().pop();
        let mut lc = match taken {
            Some(lc) => lc,
            None => LookupConn {
                conn: open()?,
                held: None,
            },
        };
        let out = self.fresh(&mut lc).and_then(|()| f(&lc.conn));
        // After an error the transaction is not kept, and a connection that cannot end it
        // is not kept either.
        let keep = out.is_ok() || lc.release().is_ok();
        if keep {
            let mut idle = self.lock();
            if idle.len() < MAX_IDLE {
                idle.push(lc);
            }
        }
        out
    }

    /// Makes `lc`'s snapshot the newest: keeps its transaction while the wal-index header is
    /// unchanged, otherwise ends it and begins another (which takes its snapshot at its first
    /// statement, after the header was read).
    fn fresh(&self, lc: &mut LookupConn) -> Result<(), Error> {
        let now = self.header();
        if lc.held.is_some() && lc.held == now {
            return Ok(());
        }
        lc.release()?;
        if let Some(now) = now {
            lc.conn.execute_batch("BEGIN")?;
            lc.held = Some(now);
        }
        Ok(())
    }

    /// Ends the read transactions of idle connections, so they do not keep the WAL from
    /// being reset (SQLite restarts the WAL only when no reader uses it). Called before every
    /// write of this process.
    pub(super) fn release_idle(&self) {
        let mut idle = self.lock();
        if idle.iter().all(|lc| lc.held.is_none()) {
            return;
        }
        idle.retain_mut(|lc| lc.release().is_ok());
    }

    /// Idle connections and how many of them hold a read transaction (tests).
    #[cfg(test)]
    pub(super) fn idle_counts(&self) -> (usize, usize) {
        let idle = self.lock();
        (
            idle.len(),
            idle.iter().filter(|lc| lc.held.is_some()).count(),
        )
    }
}

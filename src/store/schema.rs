//! Schema and migrations, versioned by SQLite's `user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1` and runs in the
//! same transaction as the `user_version` bump, so a crash mid-migration leaves the previous
//! version intact. Never edit a released migration; append a new one.

use rusqlite::Connection;

use super::Error;

/// Migrations in order; `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: the initial schema.
    r#"
    -- Current labels: one row per (src, uri, cid, val), cid '' when absent (SQLite treats
    -- NULLs as distinct in UNIQUE). Replacing a label deletes the old row and inserts a new one,
    -- so it gets a new seq and the old event leaves the backfill: the Ozone model
    -- (docs/protocol.md §6). AUTOINCREMENT guarantees a seq is never reused, even after the
    -- highest row is replaced.
    CREATE TABLE labels (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        src TEXT NOT NULL,
        uri TEXT NOT NULL,
        cid TEXT NOT NULL DEFAULT '',
        val TEXT NOT NULL,
        neg INTEGER NOT NULL DEFAULT 0 CHECK (neg IN (0, 1)),
        cts TEXT NOT NULL,
        exp TEXT,
        sig BLOB NOT NULL CHECK (length(sig) = 64)
    );
    CREATE UNIQUE INDEX labels_key ON labels (src, uri, cid, val);
    -- (uri) entries are ordered by (uri, rowid): exact lookups are `uri = ? AND seq > ?`.
    -- Replaced by the covering `labels_by_uri` in v6.
    CREATE INDEX labels_uri ON labels (uri);

    -- Every label ever signed, in commit order; never updated or deleted.
    CREATE TABLE label_history (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        src TEXT NOT NULL,
        uri TEXT NOT NULL,
        cid TEXT NOT NULL,
        val TEXT NOT NULL,
        neg INTEGER NOT NULL,
        cts TEXT NOT NULL,
        exp TEXT,
        sig BLOB NOT NULL
    );

    -- One row per attestation record (did, rkey) with its latest verification.
    CREATE TABLE attestations (
        did TEXT NOT NULL,
        rkey TEXT NOT NULL,
        domain TEXT NOT NULL,
        selectors TEXT NOT NULL,
        record_cid TEXT,
        rev TEXT,
        created_at TEXT,
        first_seen_ms INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        standing INTEGER NOT NULL,
        relay_member INTEGER NOT NULL,
        report TEXT,
        checked_ms INTEGER,
        last_definitive_ms INTEGER,
        consecutive_failures INTEGER NOT NULL,
        consecutive_undecided INTEGER NOT NULL,
        next_check_ms INTEGER NOT NULL,
        PRIMARY KEY (did, rkey)
    ) WITHOUT ROWID;
    CREATE INDEX attestations_due ON attestations (next_check_ms);

    -- Latest applied repo revision per record, deletes included (tombstones), so replayed or
    -- reordered Jetstream events older than what was applied are ignored (docs/jetstream.md §5.2).
    CREATE TABLE record_revs (
        did TEXT NOT NULL,
        rkey TEXT NOT NULL,
        rev TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        PRIMARY KEY (did, rkey)
    ) WITHOUT ROWID;

    -- Account status of DIDs we track, from Jetstream account events.
    CREATE TABLE accounts (
        did TEXT PRIMARY KEY,
        active INTEGER NOT NULL,
        status TEXT,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- Small named values: the Jetstream cursor.
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // v2: one name for "could not decide" everywhere (the report's outcome spelling).
    r#"
    UPDATE attestations SET verdict = 'could-not-decide' WHERE verdict IN ('undecided', 'pending');
    "#,
    // v3: attestations refused because their DID already holds the most a DID may, so the
    // refusal is shown (getVerification) instead of being silent. At most a few per DID: the
    // manager keeps only the newest.
    r#"
    CREATE TABLE refusals (
        did TEXT NOT NULL,
        rkey TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (did, rkey)
    ) WITHOUT ROWID;
    "#,
    // v4: the key every signing transaction checks (a rotation by another process is seen
    // before anything is signed with the retired key), and each label's expiry as unix ms so
    // expired labels are left out of reads with one comparison whatever the datetime's form.
    r#"
    CREATE TABLE signing_keys (
        did_key TEXT PRIMARY KEY,
        activated_ms INTEGER NOT NULL,
        retired_ms INTEGER
    ) WITHOUT ROWID;
    ALTER TABLE labels ADD COLUMN exp_ms INTEGER;
    UPDATE labels SET exp_ms = CAST(unixepoch(exp, 'subsec') * 1000 AS INTEGER)
        WHERE exp IS NOT NULL;
    "#,
    // v5: the operator's console. Attestations by domain (getVerification?domain=, for relays
    // that know only the envelope domain), and each attestation's verdict changes (the newest
    // few; the store prunes the rest).
    r#"
    CREATE INDEX attestations_domain ON attestations (domain);
    CREATE TABLE verdict_history (
        id INTEGER PRIMARY KEY,
        did TEXT NOT NULL,
        rkey TEXT NOT NULL,
        domain TEXT NOT NULL,
        verdict TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX verdict_history_attestation ON verdict_history (did, rkey, id);
    "#,
    // v6: queryLabels by subject from the index alone (BENCHMARKS.md, "Read path").
    // `labels_uri` held only (uri, seq), so every match cost a second b-tree descent into the
    // table for its columns: about one more page read per exact lookup, and a row read per
    // index entry for the expiry check of the prefix plan. This index holds every column
    // those reads return, in (uri, seq) order, so `uri = ?1 AND seq > ?2 ORDER BY seq` is a
    // covering range scan; it replaces `labels_uri` (a prefix of it). The cost is file size:
    // about 200 bytes per label instead of about 45.
    r#"
    CREATE INDEX labels_by_uri ON labels (uri, seq, exp_ms, src, cid, val, neg, cts, exp, sig);
    DROP INDEX labels_uri;
    "#,
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`VERSION`]. Refuses a database written by a newer build.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    migrate_to(conn, VERSION)
}

/// Brings the database to `target` (at most [`VERSION`]); tests build older schemas with it.
///
/// Several processes may open one database at once (the daemon and `labeler recheck` after an
/// upgrade, a bench's server and writer): each step takes the write lock first
/// (`BEGIN IMMEDIATE`) and reads the version under it, so a step another process applied
/// meanwhile is skipped, never run twice.
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), Error> {
    let target = target.min(VERSION);
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > VERSION {
            return Err(Error::TooNew {
                found: current,
                supported: VERSION,
            });
        }
        if current >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}

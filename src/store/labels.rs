//! Labels: writing signed labels (replacing the current row per key), reading them back by
//! seq or by subject, and encoding stream frames straight from rows.

use rusqlite::{Connection, OptionalExtension, Row, ToSql, Transaction, params};

use super::attestations::now_ms;
use super::{Error, Store};
use crate::label::{LabelRef, SignedLabel};

/// Columns in the order [`borrow_row`] reads them.
const COLUMNS: &str = "seq, src, uri, cid, val, neg, cts, exp, sig";

/// Current labels after a seq, in seq order: backfill pages and the live feed. Expired labels
/// are left out: <https://atproto.com/specs/label> "Expiration": they are not to be served.
const AFTER_SQL: &str = "SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM labels \
     WHERE seq > ?1 AND (exp_ms IS NULL OR exp_ms > ?3) ORDER BY seq LIMIT ?2";

/// The hot queryLabels statement: one exact subject, no `sources` filter. Served from the
/// statement cache; the read connections' QPSG keeps it from being re-prepared on every use
/// (`docs/performance.md` §2; `exact_lookups_are_never_re_prepared` guards it).
pub(crate) const EXACT_SQL: &str = "SELECT seq, src, uri, cid, val, neg, cts, exp, sig \
     FROM labels WHERE uri = ?1 AND seq > ?2 AND (exp_ms IS NULL OR exp_ms > ?4) \
     ORDER BY seq LIMIT ?3";

/// The condition that leaves out expired labels, for statements built at run time (`?N` is
/// the current time in unix ms).
fn unexpired(n: usize) -> String {
    format!(" AND (exp_ms IS NULL OR exp_ms > ?{n})")
}

/// A label as stored: its seq and the signed label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLabel {
    /// Position in the label stream; strictly increasing, never reused.
    pub seq: i64,
    /// The label.
    pub signed: SignedLabel,
}

/// One `uriPatterns` entry of `com.atproto.label.queryLabels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UriPattern {
    /// Exactly this subject.
    Exact(String),
    /// Every subject that starts with this string (the pattern without its trailing `*`).
    Prefix(String),
}

impl UriPattern {
    /// Parses one `uriPatterns` value of `com.atproto.label.queryLabels`
    /// (<https://atproto.com/specs/label>): a prefix when its only `*` is the last character
    /// (`*` alone matches every subject), else exact. `None` when a `*` stands anywhere else,
    /// which the lexicon does not allow.
    pub fn parse(p: &str) -> Option<UriPattern> {
        match p.find('*') {
            None => Some(UriPattern::Exact(p.to_owned())),
            Some(i) if i + 1 == p.len() => Some(UriPattern::Prefix(p[..i].to_owned())),
            Some(_) => None,
        }
    }
}

/// A queryLabels request, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelQuery {
    /// Patterns, OR-ed. Must not be empty; `Prefix("")` matches every label.
    pub patterns: Vec<UriPattern>,
    /// Labeler DIDs to restrict to; empty means all.
    pub sources: Vec<String>,
    /// Only labels with `seq > after`.
    pub after: i64,
    /// At most this many labels.
    pub limit: usize,
}

/// Runs `stmt` with `args` and collects the rows (columns in [`COLUMNS`] order) as owned
/// labels, decoded by [`borrow_row`] like every other read of the label columns.
fn collect_rows(
    stmt: &mut rusqlite::Statement<'_>,
    args: impl rusqlite::Params,
) -> Result<Vec<StoredLabel>, Error> {
    let mut rows = stmt.query(args)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(owned_row(r)?);
    }
    Ok(out)
}

/// One `labels` or `label_history` row as an owned label.
fn owned_row(r: &Row<'_>) -> Result<StoredLabel, Error> {
    let (seq, label, sig) = borrow_row(r)?;
    Ok(StoredLabel {
        seq,
        signed: SignedLabel {
            label: label.to_label(),
            sig: *sig,
        },
    })
}

/// Writes one label inside `tx`: replaces the current row for its (src, uri, cid, val) with a
/// new seq and appends it to the history. Returns the new seq.
pub(super) fn put_label(tx: &Transaction<'_>, l: &SignedLabel) -> Result<i64, Error> {
    put_label_at(tx, None, l)
}

/// [`put_label`] with the seq given (a mirror keeps its upstream's seqs) or, with `None`,
/// assigned by `AUTOINCREMENT`. A given seq must be above every seq in the table.
pub(super) fn put_label_at(
    tx: &Transaction<'_>,
    seq: Option<i64>,
    l: &SignedLabel,
) -> Result<i64, Error> {
    let x = &l.label;
    let cid = x.cid.as_deref().unwrap_or("");
    tx.prepare_cached("DELETE FROM labels WHERE src = ?1 AND uri = ?2 AND cid = ?3 AND val = ?4")?
        .execute(params![x.src, x.uri, cid, x.val])?;
    tx.prepare_cached(
        "INSERT INTO labels (seq, src, uri, cid, val, neg, cts, exp, sig, exp_ms)
         VALUES (?9, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                 CAST(unixepoch(?7, 'subsec') * 1000 AS INTEGER))",
    )?
    .execute(params![
        x.src,
        x.uri,
        cid,
        x.val,
        x.neg,
        x.cts,
        x.exp,
        &l.sig[..],
        seq
    ])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO label_history (seq, src, uri, cid, val, neg, cts, exp, sig)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        seq,
        x.src,
        x.uri,
        cid,
        x.val,
        x.neg,
        x.cts,
        x.exp,
        &l.sig[..]
    ])?;
    Ok(seq)
}

/// Current labels from `src` on `uri`, inside a transaction.
pub(super) fn current_for(
    conn: &Connection,
    src: &str,
    uri: &str,
) -> Result<Vec<StoredLabel>, Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM labels WHERE uri = ?1 AND src = ?2 ORDER BY seq"
    ))?;
    collect_rows(&mut stmt, params![uri, src])
}

/// The active signing key's did:key, inside a transaction.
pub(super) fn active_key_in(c: &Connection) -> Result<Option<String>, Error> {
    Ok(
        c.prepare_cached("SELECT did_key FROM signing_keys WHERE retired_ms IS NULL")?
            .query_row([], |r| r.get(0))
            .optional()?,
    )
}

/// What [`Store::rewrite_labels`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Current labels read.
    pub read: usize,
    /// Labels written (each with a new seq).
    pub written: usize,
}

impl Store {
    /// The did:key of the key labels are signed with, when one is recorded.
    pub fn active_key(&self) -> Result<Option<String>, Error> {
        self.read(active_key_in)
    }

    /// Records `did_key` as the active signing key when none is recorded yet (the first start
    /// of a database). [`Error::KeyRotated`] when another key is active.
    pub fn adopt_key(&self, did_key: &str) -> Result<(), Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        match active_key_in(&tx)? {
            Some(active) if active == did_key => {}
            Some(active) => return Err(Error::KeyRotated { active }),
            None => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO signing_keys (did_key, activated_ms, retired_ms)
                     VALUES (?1, ?2, NULL)",
                )?
                .execute(params![did_key, now_ms()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Rewrites the current labels in one transaction: `rewrite` maps each current label to
    /// the labels that replace it (none keeps it as it is), written in order, each with a new
    /// seq, so subscribers following from their cursor receive them. `expected` must be the
    /// active key (or none be recorded); afterwards `active` is, and any other is retired.
    /// Every process that signs checks the active key in its own transactions, so once this
    /// commits nothing is signed with a retired key.
    ///
    /// The signing is done before the write transaction, on every core, from a snapshot, so
    /// the write lock is held only for the writes (other writers, such as a running daemon,
    /// wait at most that long). Labels that changed between the snapshot and the transaction
    /// are rewritten inside it, from what is current then.
    pub fn rewrite_labels(
        &self,
        expected: &str,
        active: &str,
        rewrite: impl Fn(&StoredLabel) -> Vec<SignedLabel> + Sync,
    ) -> Result<Rewritten, Error> {
        let snapshot = self.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM labels ORDER BY seq"))?;
            collect_rows(&mut stmt, [])
        })?;
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = snapshot.len().div_ceil(threads).max(1);
        let prepared: Vec<(i64, Vec<SignedLabel>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = snapshot
                .chunks(chunk)
                .map(|part| {
                    let rewrite = &rewrite;
                    scope
                        .spawn(move || part.iter().map(|l| (l.seq, rewrite(l))).collect::<Vec<_>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });

        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(current) = active_key_in(&tx)?
            && current != expected
        {
            return Err(Error::KeyRotated { active: current });
        }
        let mut stmt = tx.prepare(&format!("SELECT {COLUMNS} FROM labels ORDER BY seq"))?;
        let current = collect_rows(&mut stmt, [])?;
        drop(stmt);
        let prepared: std::collections::HashMap<i64, Vec<SignedLabel>> =
            prepared.into_iter().collect();
        let mut done = Rewritten {
            read: current.len(),
            written: 0,
        };
        for l in &current {
            // A row written since the snapshot is rewritten from what it is now.
            let next = match prepared.get(&l.seq) {
                Some(next) => next.clone(),
                None => rewrite(l),
            };
            for n in &next {
                put_label(&tx, n)?;
                done.written += 1;
            }
        }
        let now = now_ms();
        tx.prepare_cached(
            "UPDATE signing_keys SET retired_ms = ?2 WHERE retired_ms IS NULL AND did_key != ?1",
        )?
        .execute(params![active, now])?;
        tx.prepare_cached(
            "INSERT INTO signing_keys (did_key, activated_ms, retired_ms) VALUES (?1, ?2, NULL)
             ON CONFLICT (did_key) DO UPDATE SET retired_ms = NULL",
        )?
        .execute(params![active, now])?;
        tx.commit()?;
        drop(conn);
        if done.written > 0 {
            self.notify_commit();
        }
        Ok(done)
    }

    /// Like [`Store::write_labels`], for a process signing with the key `signed_by`: refuses
    /// ([`Error::KeyRotated`]) when the database names another active key.
    pub fn write_labels_signed_by(
        &self,
        signed_by: &str,
        labels: &[SignedLabel],
    ) -> Result<Vec<StoredLabel>, Error> {
        self.write_checked(Some(signed_by), labels)
    }

    /// Writes labels in one transaction (replacing current rows) and returns them with their
    /// seqs. Used for manual labels; the manager writes through [`Store::update_did`].
    pub fn write_labels(&self, labels: &[SignedLabel]) -> Result<Vec<StoredLabel>, Error> {
        self.write_checked(None, labels)
    }

    fn write_checked(
        &self,
        signed_by: Option<&str>,
        labels: &[SignedLabel],
    ) -> Result<Vec<StoredLabel>, Error> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(key) = signed_by
            && let Some(active) = active_key_in(&tx)?
            && active != key
        {
            return Err(Error::KeyRotated { active });
        }
        let mut out = Vec::with_capacity(labels.len());
        for l in labels {
            let seq = put_label(&tx, l)?;
            out.push(StoredLabel {
                seq,
                signed: l.clone(),
            });
        }
        tx.commit()?;
        drop(conn);
        if !out.is_empty() {
            self.notify_commit();
        }
        Ok(out)
    }

    /// The highest seq ever assigned (0 when no label was ever written). Counts replaced rows
    /// too, via `sqlite_sequence`, so a cursor equal to a replaced label's seq is not "future".
    pub fn head_seq(&self) -> Result<i64, Error> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'labels'")?
                    .query_row([], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
            )
        })
    }

    /// Up to `limit` current labels with `seq > after`, in seq order.
    pub fn labels_after(&self, after: i64, limit: usize) -> Result<Vec<StoredLabel>, Error> {
        self.read(|c| labels_after(c, after, limit))
    }

    /// Hands up to `limit` current labels with `seq > after` to `each`, in seq order, borrowed
    /// straight from SQLite's buffers: the backfill and live-feed hot path, which encodes
    /// frames without owned strings. Returns how many there were. Blocking.
    pub fn visit_after(
        &self,
        after: i64,
        limit: usize,
        mut each: impl FnMut(i64, &LabelRef<'_>, &[u8; 64]),
    ) -> Result<usize, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(AFTER_SQL)?;
            let mut rows = stmt.query(params![after, limit as i64, now_ms()])?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                let (seq, label, sig) = borrow_row(r)?;
                each(seq, &label, sig);
                n += 1;
            }
            Ok(n)
        })
    }

    /// Current labels from `src` on `uri`, in seq order.
    pub fn current_labels(&self, src: &str, uri: &str) -> Result<Vec<StoredLabel>, Error> {
        self.read(|c| current_for(c, src, uri))
    }

    /// Runs a queryLabels request: current rows (negations included) in seq order.
    ///
    /// Exact patterns use the `uri` index; prefixes a range scan on it (`uri >= p AND uri <
    /// succ(p)`), never `LIKE`, so `_`, `%` and letter case match exactly.
    pub fn query_labels(&self, q: &LabelQuery) -> Result<Vec<StoredLabel>, Error> {
        self.read(|c| query_labels(c, q))
    }

    /// Runs a queryLabels request, handing each row to `each` as borrowed `(seq, label, sig)`
    /// in seq order, and returns how many rows matched. This is the allocation-free form of
    /// [`Store::query_labels`] that the server encodes JSON from.
    ///
    /// Its cost can grow with the data (see [`Store::visit_labels_quick`]): call it from the
    /// blocking pool.
    pub fn visit_labels(
        &self,
        q: &LabelQuery,
        each: impl FnMut(i64, &LabelRef<'_>, &[u8]),
    ) -> Result<usize, Error> {
        self.read(|c| visit(c, q, Mode::Full, each))
            .map(|n| n.unwrap_or(0))
    }

    /// Like [`Store::visit_labels`], but only when the answer is cheap — a bounded number of
    /// index probes or a page-sized scan, a few tens of microseconds. `None` when the query
    /// needs a plan whose cost grows with the data; `each` may then have seen the first rows
    /// of the page, which the caller discards before asking [`Store::visit_labels`].
    ///
    /// Meant to run inline on an async worker: the common queries (one DID, a few DIDs, `*`,
    /// broad prefixes) never pay for a hop to the blocking pool.
    pub fn visit_labels_quick(
        &self,
        q: &LabelQuery,
        each: impl FnMut(i64, &LabelRef<'_>, &[u8]),
    ) -> Result<Option<usize>, Error> {
        // Exact subjects descend the lookup index: they get the connections whose cache
        // holds its interior. A seq-order scan (`*`, a broad prefix) reads table pages once
        // and would only churn that cache.
        if q.patterns.iter().all(|p| matches!(p, UriPattern::Exact(_))) {
            self.lookup(|c| visit(c, q, Mode::Quick, each))
        } else {
            self.read(|c| visit(c, q, Mode::Quick, each))
        }
    }

    /// Every label ever written (the append-only history), in commit order.
    pub fn label_history(&self) -> Result<Vec<StoredLabel>, Error> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {COLUMNS} FROM label_history ORDER BY id"))?;
            collect_rows(&mut stmt, [])
        })
    }
}

/// Up to `limit` current labels with `seq > after` on connection `c`.
pub(crate) fn labels_after(
    c: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<StoredLabel>, Error> {
    let mut stmt = c.prepare_cached(AFTER_SQL)?;
    collect_rows(&mut stmt, params![after, limit as i64, now_ms()])
}

/// Borrows one `labels` row (columns in [`COLUMNS`] order) as `(seq, label, sig)` without
/// copying: the hot paths (stream frames, queryLabels JSON) encode straight from SQLite's
/// buffers. The one decoder of the label columns: a row with a column of the wrong type or a
/// signature that is not 64 bytes is [`Error::Corrupt`], naming its seq, on every path.
fn borrow_row<'r>(r: &'r Row<'_>) -> Result<(i64, LabelRef<'r>, &'r [u8; 64]), Error> {
    let seq: i64 = r.get(0)?;
    let corrupt = |what: &str, e: rusqlite::types::FromSqlError| Error::Corrupt {
        table: "labels",
        message: format!("seq {seq} {what}: {e}"),
    };
    let text = |i: usize, what: &str| -> Result<&'r str, Error> {
        r.get_ref(i)?.as_str().map_err(|e| corrupt(what, e))
    };
    let cid = text(3, "cid")?;
    let exp = r
        .get_ref(7)?
        .as_str_or_null()
        .map_err(|e| corrupt("exp", e))?;
    let neg: bool = r.get(5)?;
    let sig: &[u8; 64] = r
        .get_ref(8)?
        .as_blob()
        .map_err(|e| corrupt("sig", e))?
        .try_into()
        .map_err(|_| Error::Corrupt {
            table: "labels",
            message: format!("seq {seq} sig is not 64 bytes"),
        })?;
    let label = LabelRef {
        src: text(1, "src")?,
        uri: text(2, "uri")?,
        cid: (!cid.is_empty()).then_some(cid),
        val: text(4, "val")?,
        neg,
        cts: text(6, "cts")?,
        exp,
    };
    Ok((seq, label, sig))
}

/// The smallest string greater than every string that starts with `p`, or `None` when no
/// such bound exists (empty prefix). UTF-8 byte order equals code point order, and no
/// encoding is a prefix of another, so bumping the last code point gives the bound.
pub(crate) fn prefix_upper_bound(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn query_labels(c: &Connection, q: &LabelQuery) -> Result<Vec<StoredLabel>, Error> {
    let mut out = Vec::new();
    query_rows(c, q, Mode::Full, |r| {
        out.push(owned_row(r)?);
        Ok(())
    })?;
    Ok(out)
}

/// Whether a query may use the plans whose cost grows with the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Only bounded plans; give up (`None`) otherwise.
    Quick,
    /// Any plan.
    Full,
}

/// Most exact subjects answered in [`Mode::Quick`]. Each is one index probe of a few
/// microseconds, so a relay's batch of 50 senders holds a worker for about 0.4 ms at a million
/// labels (BENCHMARKS.md, "Read path"), and answering it inline spares the hop to the blocking
/// pool, which runs two queries at a time: through it, batches left a core idle (111,000
/// DIDs/s; about 139,000 inline with the same page cache, the same afternoon).
const QUICK_MAX_EXACT: usize = 64;

/// Most index entries read in [`Mode::Quick`]: a narrow prefix such as the records of one
/// account (`at://did:plc:…/*`) is answered inline.
const QUICK_INDEX_CAP: usize = 256;

fn visit(
    c: &Connection,
    q: &LabelQuery,
    mode: Mode,
    mut each: impl FnMut(i64, &LabelRef<'_>, &[u8]),
) -> Result<Option<usize>, Error> {
    let mut n = 0;
    let done = query_rows(c, q, mode, |r| {
        let (seq, label, sig) = borrow_row(r)?;
        each(seq, &label, sig);
        n += 1;
        Ok(())
    })?;
    Ok(done.then_some(n))
}

/// Rows a queryLabels request first scans in seq order, as a multiple of its limit: a broad
/// pattern (half the labels or more match) finds its page within them.
const QUICK_SCAN_FACTOR: i64 = 2;

/// Most index entries a queryLabels request reads to find its page by subject or source.
///
/// Rows are wanted in seq order, but the `uri` and `(src, …)` indexes order them by subject,
/// so an index plan reads every match to find the lowest seqs: its cost grows with the number
/// of matches. Scanning the table in seq order and filtering costs about `limit × rows /
/// matches` instead, which is cheaper for broad patterns. The two cross near
/// `sqrt(limit × rows)`: a few thousand at a million labels.
const INDEX_PLAN_CAP: usize = 4000;

/// Runs a queryLabels request on `c`, calling `each` on every matching row in seq order.
///
/// Plans (statement shapes are deterministic, so they come from the statement cache):
/// - one exact subject, no sources: [`EXACT_SQL`], a `(uri, seq)` index range;
/// - exact subjects only: `uri IN (…)` on the `uri` index, sorted by seq;
/// - `*` without sources: the table in seq order from the cursor;
/// - anything else (prefixes, `*` with sources), in order until one answers:
///   1. a seq-order scan of the next `QUICK_SCAN_FACTOR × limit` rows: enough for broad
///      patterns;
///   2. the index plan: the matching seqs from the covering `uri` (or `(src, …)`) index, the
///      lowest `limit` kept, then those rows by seq — abandoned past [`INDEX_PLAN_CAP`]
///      entries ([`QUICK_INDEX_CAP`] in [`Mode::Quick`], which then gives up);
///   3. the seq-order scan from the cursor with the patterns as filters (`+` keeps SQLite
///      from choosing an index for them).
fn query_rows(
    c: &Connection,
    q: &LabelQuery,
    mode: Mode,
    mut each: impl FnMut(&Row<'_>) -> Result<(), Error>,
) -> Result<bool, Error> {
    // The common case, a relay asking about one DID, gets a fixed statement.
    if let ([UriPattern::Exact(uri)], []) = (q.patterns.as_slice(), q.sources.as_slice()) {
        let mut stmt = c.prepare_cached(EXACT_SQL)?;
        let mut rows = stmt.query(params![uri, q.after, q.limit as i64, now_ms()])?;
        while let Some(r) = rows.next()? {
            each(r)?;
        }
        return Ok(true);
    }

    let match_all = q
        .patterns
        .iter()
        .any(|p| matches!(p, UriPattern::Prefix(p) if p.is_empty()));
    let all_exact = q.patterns.iter().all(|p| matches!(p, UriPattern::Exact(_)));
    let bounds: Vec<Option<String>> = q
        .patterns
        .iter()
        .map(|p| match p {
            UriPattern::Prefix(p) => prefix_upper_bound(p),
            UriPattern::Exact(_) => None,
        })
        .collect();

    if all_exact && q.patterns.len() > QUICK_MAX_EXACT && mode == Mode::Quick {
        return Ok(false);
    }
    let simple = all_exact || (match_all && q.sources.is_empty());
    if simple {
        scan_rows(c, q, &bounds, match_all, all_exact, q.after, q.limit, each)?;
        return Ok(true);
    }
    // The multi-step plans run in one read transaction: one snapshot and one lock for all of
    // their statements, instead of one each (a `fcntl` and an `fstat` per statement).
    // A lookup connection may already be in one (`lookup`).
    let tx = if c.is_autocommit() {
        Some(c.unchecked_transaction()?)
    } else {
        None
    };
    // Plan 1 hands over the matches among the next few seqs: they open the page whatever
    // follows, since every later match has a higher seq.
    let end = q.after.saturating_add(QUICK_SCAN_FACTOR * q.limit as i64);
    let found = quick_rows(c, q, &bounds, match_all, end, &mut each)?;
    let rest = q.limit - found;
    let head: Option<i64> = c
        .prepare_cached("SELECT max(seq) FROM labels")?
        .query_row([], |r| r.get(0))?;
    if rest > 0 && head.is_some_and(|h| h > end) {
        let cap = match mode {
            Mode::Quick => QUICK_INDEX_CAP,
            Mode::Full => INDEX_PLAN_CAP,
        };
        match lowest_from_index(c, q, &bounds, match_all, end, rest, cap)? {
            Some(seqs) => rows_by_seq(c, &seqs, &mut each)?,
            None if mode == Mode::Quick => return Ok(false),
            None => scan_rows(c, q, &bounds, match_all, all_exact, end, rest, &mut each)?,
        }
    }
    if let Some(tx) = tx {
        tx.commit()?;
    }
    Ok(true)
}

/// Plan 3 (and the simple shapes): one statement over the table in seq order, or over the
/// `uri` index for exact subjects only.
#[allow(clippy::too_many_arguments)]
fn scan_rows(
    c: &Connection,
    q: &LabelQuery,
    bounds: &[Option<String>],
    match_all: bool,
    all_exact: bool,
    after: i64,
    limit: usize,
    mut each: impl FnMut(&Row<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let limit = limit as i64;
    let now = now_ms();
    // ?1 is the cursor, ?2 the time; the rest are numbered as they are pushed.
    let mut args: Vec<&dyn ToSql> = vec![&after, &now];
    let mut sql = if all_exact {
        let uris = q.patterns.iter().map(|p| match p {
            UriPattern::Exact(u) | UriPattern::Prefix(u) => u as &dyn ToSql,
        });
        let mut sql = format!(
            "SELECT {COLUMNS} FROM labels WHERE seq > ?1{} AND uri IN ({})",
            unexpired(2),
            push_marks(&mut args, uris)
        );
        if !q.sources.is_empty() {
            let srcs = q.sources.iter().map(|s| s as &dyn ToSql);
            sql.push_str(&format!(" AND +src IN ({})", push_marks(&mut args, srcs)));
        }
        sql
    } else {
        let f = filter(&mut args, q, bounds, match_all, "+");
        format!(
            "SELECT {COLUMNS} FROM labels WHERE seq > ?1{}{f}",
            unexpired(2)
        )
    };
    args.push(&limit);
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(args.as_slice())?;
    while let Some(r) = rows.next()? {
        each(r)?;
    }
    Ok(())
}

/// Plan 1: hands the matches among the seqs in `(q.after, end]` to `each` (at most
/// `q.limit`) and returns how many there were.
fn quick_rows(
    c: &Connection,
    q: &LabelQuery,
    bounds: &[Option<String>],
    match_all: bool,
    end: i64,
    mut each: impl FnMut(&Row<'_>) -> Result<(), Error>,
) -> Result<usize, Error> {
    let limit = q.limit as i64;
    let now = now_ms();
    let mut args: Vec<&dyn ToSql> = vec![&q.after, &end, &now];
    let f = filter(&mut args, q, bounds, match_all, "+");
    args.push(&limit);
    let sql = format!(
        "SELECT {COLUMNS} FROM labels WHERE seq > ?1 AND seq <= ?2{}{f} ORDER BY seq LIMIT ?{}",
        unexpired(3),
        args.len()
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(args.as_slice())?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        each(r)?;
        n += 1;
    }
    Ok(n)
}

/// Plan 2: the lowest `limit` seqs above `after` among the index entries that match, or
/// `None` once more than `cap` entries were read. Entries are read whatever
/// their seq (the index orders them by subject), so the cap bounds the work even when the
/// cursor is past most matches.
fn lowest_from_index(
    c: &Connection,
    q: &LabelQuery,
    bounds: &[Option<String>],
    match_all: bool,
    after: i64,
    limit: usize,
    cap: usize,
) -> Result<Option<Vec<i64>>, Error> {
    // The lowest seqs seen. A set, because a label matching two patterns is read twice.
    // Expired labels are skipped (`exp_ms` is in the covering `labels_by_uri` index).
    let now = now_ms();
    let mut lowest = std::collections::BTreeSet::new();
    let mut read = 0;
    let mut take =
        |stmt: &mut rusqlite::Statement<'_>, args: &[&dyn ToSql]| -> Result<bool, Error> {
            let mut rows = stmt.query(args)?;
            while let Some(r) = rows.next()? {
                read += 1;
                if read > cap {
                    return Ok(false);
                }
                let seq: i64 = r.get(0)?;
                let exp_ms: Option<i64> = r.get(1)?;
                if exp_ms.is_some_and(|e| e <= now) {
                    continue;
                }
                let wanted = lowest.len() < limit || lowest.last().is_some_and(|&m| seq < m);
                if seq > after && wanted && lowest.insert(seq) && lowest.len() > limit {
                    lowest.pop_last();
                }
            }
            Ok(true)
        };
    // Subject patterns use the covering `labels_by_uri` index, which holds `src` too; sources
    // alone use the `(src, …)` index, which covers them.
    let src_args: Vec<&dyn ToSql> = q.sources.iter().map(|s| s as &dyn ToSql).collect();
    let src_filter = |first: usize| -> String {
        if q.sources.is_empty() {
            return String::new();
        }
        let marks: Vec<String> = (0..q.sources.len())
            .map(|i| format!("?{}", first + i))
            .collect();
        format!(" AND src IN ({})", marks.join(", "))
    };
    if match_all {
        let mut stmt = c.prepare_cached(
            "SELECT seq, exp_ms FROM labels INDEXED BY labels_key WHERE src = ?1",
        )?;
        for s in &q.sources {
            if !take(&mut stmt, &[s])? {
                return Ok(None);
            }
        }
    } else {
        for (p, hi) in q.patterns.iter().zip(bounds) {
            let (sql, mut args): (String, Vec<&dyn ToSql>) = match (p, hi) {
                (UriPattern::Exact(u), _) => (
                    format!(
                        "SELECT seq, exp_ms FROM labels INDEXED BY labels_by_uri WHERE uri = ?1{}",
                        src_filter(2)
                    ),
                    vec![u],
                ),
                (UriPattern::Prefix(lo), Some(hi)) => (
                    format!(
                        "SELECT seq, exp_ms FROM labels INDEXED BY labels_by_uri \
                         WHERE uri >= ?1 AND uri < ?2{}",
                        src_filter(3)
                    ),
                    vec![lo, hi],
                ),
                // Only the empty prefix has no bound, and then `match_all` is set.
                (UriPattern::Prefix(_), None) => return Ok(None),
            };
            args.extend(&src_args);
            let mut stmt = c.prepare_cached(&sql)?;
            if !take(&mut stmt, &args)? {
                return Ok(None);
            }
        }
    }
    Ok(Some(lowest.into_iter().collect()))
}

/// Hands the rows with these seqs (ascending) to `each`.
fn rows_by_seq(
    c: &Connection,
    seqs: &[i64],
    mut each: impl FnMut(&Row<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM labels WHERE seq = ?1"))?;
    for seq in seqs {
        let mut rows = stmt.query([seq])?;
        if let Some(r) = rows.next()? {
            each(r)?;
        }
    }
    Ok(())
}

/// Pushes `values` as parameters and returns their placeholders (`?4, ?5`).
fn push_marks<'a>(
    args: &mut Vec<&'a dyn ToSql>,
    values: impl IntoIterator<Item = &'a dyn ToSql>,
) -> String {
    let mut marks = Vec::new();
    for v in values {
        args.push(v);
        marks.push(format!("?{}", args.len()));
    }
    marks.join(", ")
}

/// The subject and source conditions of a query (` AND (…) AND src IN (…)`), with `plus`
/// (`"+"` or `""`) in front of every column so the scan plan can keep SQLite off the indexes.
fn filter<'a>(
    args: &mut Vec<&'a dyn ToSql>,
    q: &'a LabelQuery,
    bounds: &'a [Option<String>],
    match_all: bool,
    plus: &str,
) -> String {
    let mut conds = Vec::new();
    if !match_all {
        for (p, hi) in q.patterns.iter().zip(bounds) {
            match (p, hi) {
                (UriPattern::Exact(u), _) => {
                    args.push(u);
                    conds.push(format!("{plus}uri = ?{}", args.len()));
                }
                (UriPattern::Prefix(lo), Some(hi)) => {
                    args.push(lo);
                    args.push(hi);
                    conds.push(format!(
                        "({plus}uri >= ?{} AND {plus}uri < ?{})",
                        args.len() - 1,
                        args.len()
                    ));
                }
                // Only the empty prefix has no upper bound, and then `match_all` is set.
                (UriPattern::Prefix(_), None) => {}
            }
        }
    }
    let mut sql = String::new();
    if !conds.is_empty() {
        sql.push_str(&format!(" AND ({})", conds.join(" OR ")));
    }
    if !q.sources.is_empty() {
        let srcs = q.sources.iter().map(|s| s as &dyn ToSql);
        sql.push_str(&format!(" AND {plus}src IN ({})", push_marks(args, srcs)));
    }
    sql
}

/// Watches the database for commits made by any connection, including other processes
/// (the `label` CLI), through `PRAGMA data_version`.
#[derive(Debug)]
pub struct Watcher {
    conn: Connection,
    last: i64,
}

impl Watcher {
    /// Opens a watcher on `store`'s file.
    pub fn new(store: &Store) -> Result<Watcher, Error> {
        let conn = store.open_reader()?;
        let last = data_version(&conn)?;
        Ok(Watcher { conn, last })
    }

    /// True when another connection committed since the last call.
    pub fn changed(&mut self) -> Result<bool, Error> {
        let v = data_version(&self.conn)?;
        let changed = v != self.last;
        self.last = v;
        Ok(changed)
    }
}

fn data_version(c: &Connection) -> Result<i64, Error> {
    Ok(c.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

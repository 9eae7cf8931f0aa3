//! Label rows in one shape, wherever they come from: the labeler's database (opened
//! read-only, while it runs or after it died) and subscribeLabels frames (decoded and their
//! signatures verified by the tests' client), so the checks can compare them field for field.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use crate::common;
use crate::common::server::{Event, WireLabel};

/// One label row (`labels` or `label_history`), or a received frame in the same shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    pub src: String,
    pub uri: String,
    /// `""` when absent, as stored.
    pub cid: String,
    pub val: String,
    pub neg: bool,
    pub cts: String,
    pub exp: Option<String>,
    pub sig: Vec<u8>,
}

pub type Key = (String, String, String, String);

impl Row {
    pub fn key(&self) -> Key {
        (
            self.src.clone(),
            self.uri.clone(),
            self.cid.clone(),
            self.val.clone(),
        )
    }

    pub fn from_wire(seq: i64, l: &WireLabel) -> Row {
        Row {
            seq,
            src: l.src.clone(),
            uri: l.uri.clone(),
            cid: l.cid.clone().unwrap_or_default(),
            val: l.val.clone(),
            neg: l.neg == Some(true),
            cts: l.cts.clone(),
            exp: l.exp.clone(),
            sig: l.sig.to_vec(),
        }
    }
}

/// A read-only connection to the labeler's database (it may be running, or dead).
pub struct Db(Connection);

impl Db {
    fn open(path: &Path) -> anyhow::Result<Db> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Db(conn))
    }

    pub fn integrity_check(&self) -> anyhow::Result<String> {
        let rows: Vec<String> = self
            .0
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows.join("; "))
    }

    fn rows(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        let rows = self
            .0
            .prepare(sql)?
            .query_map([], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    src: r.get(1)?,
                    uri: r.get(2)?,
                    cid: r.get(3)?,
                    val: r.get(4)?,
                    neg: r.get(5)?,
                    cts: r.get(6)?,
                    exp: r.get(7)?,
                    sig: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every label ever committed, in commit order.
    pub fn history(&self) -> anyhow::Result<Vec<Row>> {
        self.rows(
            "SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM label_history ORDER BY id",
        )
    }

    /// The current labels, in seq order.
    pub fn current(&self) -> anyhow::Result<Vec<Row>> {
        self.rows("SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM labels ORDER BY seq")
    }

    /// (did, domain, verdict) of every attestation.
    pub fn verdicts(&self) -> anyhow::Result<HashMap<String, (String, String)>> {
        let rows = self
            .0
            .prepare("SELECT did, domain, verdict FROM attestations")?
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(self.0.query_row(sql, [], |r| r.get(0))?)
    }

    pub fn cursor(&self) -> anyhow::Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .0
            .query_row(
                "SELECT value FROM meta WHERE key = 'jetstream_cursor'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// Runs `f` on a fresh read-only connection, off the runtime's workers.
pub async fn with_db<T, F>(path: &Path, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Db) -> anyhow::Result<T> + Send + 'static,
{
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || f(&Db::open(&path)?))
        .await
        .context("database task")?
}

/// The latest row per key of a frame or row sequence.
pub fn latest_per_key<'a>(rows: impl IntoIterator<Item = &'a Row>) -> BTreeMap<Key, Row> {
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.key(), r.clone());
    }
    out
}

/// One binary subscribeLabels message, decoded (signatures verified) and checked against the
/// seq of the frame before it.
pub enum Frame {
    /// A `#labels` frame, with what is wrong with it: a seq not above the previous one, or
    /// other than exactly one label (every frame this labeler sends carries one).
    Labels {
        seq: i64,
        labels: Vec<WireLabel>,
        problems: Vec<String>,
    },
    /// An error frame, an undecodable frame or a bad signature.
    Bad(String),
    /// A close frame: nothing to record.
    Closed,
}

/// Reads one binary message received after the frame of seq `prev`.
pub fn read_frame(bytes: &[u8], prev: i64) -> Frame {
    match std::panic::catch_unwind(AssertUnwindSafe(|| common::server::decode(bytes))) {
        Ok(Event::Labels { seq, labels, .. }) => {
            let mut problems = Vec::new();
            if seq <= prev {
                problems.push(format!("seq {seq} after {prev}"));
            }
            if labels.len() != 1 {
                problems.push(format!("seq {seq}: {} labels in one frame", labels.len()));
            }
            Frame::Labels {
                seq,
                labels,
                problems,
            }
        }
        Ok(Event::Error { error, message, .. }) => {
            Frame::Bad(format!("error frame {error}: {message:?}"))
        }
        Ok(Event::Closed(_)) => Frame::Closed,
        Err(_) => Frame::Bad(format!(
            "undecodable frame or bad signature after seq {prev}"
        )),
    }
}

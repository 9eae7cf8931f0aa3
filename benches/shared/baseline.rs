//! The read-path bench's baseline: the smallest axum + rusqlite server that answers
//! exact-subject `com.atproto.label.queryLabels` from the leanest file holding the same labels,
//! so the product's figure is read as a ratio measured in the same run.
//!
//! - The file: one table with the label columns, `seq` as the `INTEGER PRIMARY KEY` (the
//!   rowid) and one index on `uri`; built once from the bench's cached database and cached next
//!   to it (`lean-<n>.db`).
//! - The server: the default multi-thread runtime, one route, no middleware. Each runtime
//!   thread keeps one read connection with SQLite's query planner stability guarantee on, so
//!   the cached statement is never re-prepared (`docs/performance.md` §2), and runs the lookup
//!   inline. JSON is written by hand in the lexicon's shape (`{"labels":[…],"cursor":…}`, the
//!   cursor after a full page), like the product's.
//! - One `uriPatterns` value: `uri = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3`; several:
//!   `uri IN (…)` under the same order and limit. Expiry, sources and prefixes are not handled:
//!   the bench's labels have none and it asks for none.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rusqlite::{Connection, OpenFlags, ToSql};

/// The lean copy of `db` (built when missing).
pub fn lean_copy(db: &Path, n: usize) -> anyhow::Result<PathBuf> {
    let lean = db.with_file_name(format!("lean-{n}.db"));
    if lean.exists() {
        return Ok(lean);
    }
    println!(
        "building the baseline's lean copy {} (once; cached)",
        lean.display()
    );
    let tmp = lean.with_extension("tmp");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", tmp.display()));
    }
    let conn = Connection::open(&tmp)?;
    conn.execute_batch("PRAGMA journal_mode = WAL")?;
    conn.execute(
        "ATTACH DATABASE ?1 AS product",
        [db.to_str().context("path")?],
    )?;
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE labels (
             seq INTEGER PRIMARY KEY,
             src TEXT NOT NULL,
             uri TEXT NOT NULL,
             cid TEXT,
             val TEXT NOT NULL,
             neg INTEGER NOT NULL,
             cts TEXT NOT NULL,
             exp TEXT,
             sig BLOB NOT NULL
         );
         INSERT INTO labels
             SELECT seq, src, uri, NULLIF(cid, ''), val, neg, cts, exp, sig
             FROM product.labels ORDER BY seq;
         CREATE INDEX labels_uri ON labels (uri);
         COMMIT;
         DETACH DATABASE product;",
    )?;
    drop(conn);
    std::fs::rename(&tmp, &lean)?;
    Ok(lean)
}

thread_local! {
    /// This runtime thread's read connection.
    static CONN: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Child mode: serves `lean` on 127.0.0.1:0 until stdin closes.
pub fn serve(lean: &Path) -> anyhow::Result<()> {
    let path = lean.to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = Router::new().route(
            "/xrpc/com.atproto.label.queryLabels",
            get(move |uri: Uri| {
                let path = path.clone();
                async move { query(&path, uri.query().unwrap_or("")) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("PORT {}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            let _ = std::io::stdin().read(&mut buf);
            let _ = stop_tx.send(());
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await?;
        Ok(())
    })
}

fn query(path: &Path, q: &str) -> Response {
    let mut uris: Vec<String> = Vec::new();
    let mut limit: i64 = 50;
    let mut after: i64 = 0;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "uriPatterns" => uris.push(decode(v)),
            "limit" => limit = v.parse().unwrap_or(50).clamp(1, 250),
            "cursor" => after = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    if uris.is_empty() {
        return (StatusCode::BAD_REQUEST, "uriPatterns is required").into_response();
    }
    let body = CONN.with(|cell| -> rusqlite::Result<Vec<u8>> {
        let mut cell = cell.borrow_mut();
        let conn = match cell.as_mut() {
            Some(c) => c,
            None => cell.insert(open(path)?),
        };
        let sql = if uris.len() == 1 {
            "SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM labels \
             WHERE uri = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                .to_owned()
        } else {
            let marks: Vec<String> = (0..uris.len()).map(|i| format!("?{}", i + 3)).collect();
            format!(
                "SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM labels \
                 WHERE uri IN ({}) AND seq > ?1 ORDER BY seq LIMIT ?2",
                marks.join(", ")
            )
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut args: Vec<&dyn ToSql> = Vec::with_capacity(uris.len() + 2);
        if uris.len() == 1 {
            args.extend([&uris[0] as &dyn ToSql, &after, &limit]);
        } else {
            args.extend([&after as &dyn ToSql, &limit]);
            args.extend(uris.iter().map(|u| u as &dyn ToSql));
        }
        let mut rows = stmt.query(args.as_slice())?;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"labels\":[");
        let mut n = 0;
        let mut last = 0i64;
        while let Some(r) = rows.next()? {
            if n > 0 {
                out.push(b',');
            }
            last = r.get(0)?;
            out.extend_from_slice(b"{\"ver\":1,\"src\":");
            string(&mut out, r.get_ref(1)?.as_str()?);
            out.extend_from_slice(b",\"uri\":");
            string(&mut out, r.get_ref(2)?.as_str()?);
            if let Some(cid) = r.get_ref(3)?.as_str_or_null()? {
                out.extend_from_slice(b",\"cid\":");
                string(&mut out, cid);
            }
            out.extend_from_slice(b",\"val\":");
            string(&mut out, r.get_ref(4)?.as_str()?);
            if r.get::<_, bool>(5)? {
                out.extend_from_slice(b",\"neg\":true");
            }
            out.extend_from_slice(b",\"cts\":");
            string(&mut out, r.get_ref(6)?.as_str()?);
            if let Some(exp) = r.get_ref(7)?.as_str_or_null()? {
                out.extend_from_slice(b",\"exp\":");
                string(&mut out, exp);
            }
            out.extend_from_slice(b",\"sig\":{\"$bytes\":\"");
            let sig = r.get_ref(8)?.as_blob()?;
            let b64 = data_encoding::BASE64_NOPAD;
            let start = out.len();
            out.resize(start + b64.encode_len(sig.len()), 0);
            b64.encode_mut(sig, &mut out[start..]);
            out.extend_from_slice(b"\"}}");
            n += 1;
        }
        out.push(b']');
        if n == limit {
            out.extend_from_slice(format!(",\"cursor\":\"{last}\"").as_bytes());
        }
        out.push(b'}');
        Ok(out)
    });
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// A JSON string; the bench's values need no escapes but `"` and `\`, which are escaped.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if s.bytes().any(|b| b == b'"' || b == b'\\') {
        for &b in s.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
    } else {
        out.extend_from_slice(s.as_bytes());
    }
    out.push(b'"');
}

/// Percent-decoding of one query value (`%3A` for `:` and the like).
fn decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

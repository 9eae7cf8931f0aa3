//! `com.atproto.label.queryLabels` (docs/protocol.md §4; lexicon
//! `com/atproto/label/queryLabels.json`).
//!
//! - `uriPatterns` (required, repeated): an exact subject, or a prefix ending in `*` that
//!   matches the string before the `*` itself and everything starting with it; `*` alone
//!   matches every label. A `*` anywhere else is a 400 naming the pattern.
//! - `sources` (repeated DIDs) filters on `src`; `limit` is 1–250 (default 50); `cursor` is
//!   opaque to clients and is the seq of the last label of the previous page.
//! - Results are the current rows (negations included) in seq order. `cursor` is returned
//!   only after a full page, so it never restarts a scan and a client stops at the first page
//!   without one.
//!
//! The hot path (a relay asking about one DID) runs its indexed lookup inline on a pooled read
//! connection and writes JSON straight from SQLite's buffers, and so does every query the
//! store can answer cheaply (a batch of up to 64 DIDs, `*`, a broad prefix:
//! `Store::visit_labels_quick`).
//! A query whose cost grows with the data (a narrow prefix over many labels, sources, many
//! patterns) is retried on the blocking pool so a worker thread never stalls.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;

use super::Shared;
use super::error::{XrpcError, json_body};
use super::params;
use crate::label::{LABEL_VERSION, LabelRef};
use crate::store::{LabelQuery, UriPattern};

/// Default and maximum page size (lexicon: `minimum: 1, maximum: 250, default: 50`).
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 250;

/// Most `uriPatterns` or `sources` values one request may carry. The lexicon sets no bound;
/// this keeps one request's work bounded (each pattern is an index probe).
const MAX_VALUES: usize = 250;

/// `GET /xrpc/com.atproto.label.queryLabels`.
pub(crate) async fn query_labels(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
) -> Result<Response, XrpcError> {
    let started = Instant::now();
    let q = parse(uri.query().unwrap_or(""))?;
    let body = match page_json(&shared.store, &q, true)? {
        Some(body) => body,
        None => shared
            .blocking(move |store| page_json(store, &q, false))
            .await?
            .ok_or_else(|| XrpcError::Internal("full query gave no answer".into()))?,
    };
    shared.query_latency.record(started.elapsed().as_secs_f64());
    Ok(json_body(body))
}

/// Parses the raw query string into a validated [`LabelQuery`].
pub(crate) fn parse(query: &str) -> Result<LabelQuery, XrpcError> {
    let mut q = LabelQuery {
        patterns: Vec::new(),
        sources: Vec::new(),
        after: 0,
        limit: DEFAULT_LIMIT as usize,
    };
    for pair in params::pairs(query) {
        let (key, value) = pair?;
        match &*key {
            "uriPatterns" => {
                if q.patterns.len() == MAX_VALUES {
                    return Err(too_many("uriPatterns"));
                }
                q.patterns.push(pattern(&value)?);
            }
            "sources" => {
                if q.sources.len() == MAX_VALUES {
                    return Err(too_many("sources"));
                }
                if !crate::syntax::is_did(&value) {
                    let shown: String = value.chars().take(100).collect();
                    return Err(XrpcError::InvalidRequest(format!(
                        "sources must be DIDs; got {shown:?}"
                    )));
                }
                q.sources.push(value.into_owned());
            }
            "limit" => q.limit = params::int_in("limit", &value, 1, MAX_LIMIT)? as usize,
            "cursor" => {
                q.after = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| XrpcError::InvalidRequest("invalid cursor".to_owned()))?;
            }
            // Unknown parameters are ignored, like the reference server does.
            _ => {}
        }
    }
    if q.patterns.is_empty() {
        return Err(XrpcError::InvalidRequest(
            "Error: Params must have the property \"uriPatterns\"".to_owned(),
        ));
    }
    Ok(q)
}

fn too_many(name: &str) -> XrpcError {
    XrpcError::InvalidRequest(format!("at most {MAX_VALUES} {name} values are allowed"))
}

/// One `uriPatterns` value ([`UriPattern::parse`]); a misplaced `*` is a 400 naming it.
fn pattern(p: &str) -> Result<UriPattern, XrpcError> {
    UriPattern::parse(p).ok_or_else(|| {
        let shown: String = p.chars().take(200).collect();
        XrpcError::InvalidRequest(format!("invalid pattern: {shown}"))
    })
}

/// Runs the query and writes the response body: `{"labels":[…],"cursor":"<seq>"}`, the
/// cursor only after a full page. With `quick`, only when the store can answer cheaply
/// (`None` otherwise: retry on the blocking pool).
pub(crate) fn page_json(
    store: &crate::store::Store,
    q: &LabelQuery,
    quick: bool,
) -> Result<Option<Vec<u8>>, XrpcError> {
    // One label is about 300 bytes of JSON: an exact lookup fits the first allocation, which
    // stays within malloc's per-thread cache (larger first buffers showed in the profile).
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"labels\":[");
    let mut last = None;
    let mut each = |seq, label: &LabelRef<'_>, sig: &[u8]| {
        if last.is_some() {
            out.push(b',');
        }
        write_label_json(&mut out, label, sig);
        last = Some(seq);
    };
    let n = if quick {
        match store.visit_labels_quick(q, &mut each)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        store.visit_labels(q, &mut each)?
    };
    out.push(b']');
    if let Some(seq) = last.filter(|_| n >= q.limit) {
        out.extend_from_slice(b",\"cursor\":\"");
        push_int(&mut out, seq);
        out.push(b'"');
    }
    out.push(b'}');
    Ok(Some(out))
}

/// Writes one label in its lexicon JSON form, byte-identical to [`crate::label::serialize_json`]
/// through `serde_json` (fields `ver, src, uri, cid?, val, neg?, cts, exp?, sig`; `sig` as
/// `{"$bytes": <standard base64, no padding>}`), without allocating.
pub(crate) fn write_label_json(out: &mut Vec<u8>, l: &LabelRef<'_>, sig: &[u8]) {
    out.extend_from_slice(b"{\"ver\":");
    push_int(out, LABEL_VERSION);
    out.extend_from_slice(b",\"src\":");
    json_str(out, l.src);
    out.extend_from_slice(b",\"uri\":");
    json_str(out, l.uri);
    if let Some(cid) = l.cid {
        out.extend_from_slice(b",\"cid\":");
        json_str(out, cid);
    }
    out.extend_from_slice(b",\"val\":");
    json_str(out, l.val);
    if l.neg {
        out.extend_from_slice(b",\"neg\":true");
    }
    out.extend_from_slice(b",\"cts\":");
    json_str(out, l.cts);
    if let Some(exp) = l.exp {
        out.extend_from_slice(b",\"exp\":");
        json_str(out, exp);
    }
    out.extend_from_slice(b",\"sig\":{\"$bytes\":\"");
    let b64 = data_encoding::BASE64_NOPAD;
    let start = out.len();
    out.resize(start + b64.encode_len(sig.len()), 0);
    b64.encode_mut(sig, &mut out[start..]);
    out.extend_from_slice(b"\"}}");
}

/// Appends a decimal integer.
fn push_int(out: &mut Vec<u8>, n: i64) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends `s` as a JSON string, escaping exactly what `serde_json` escapes: `"`, `\` and the
/// C0 controls (short forms for `\b \f \n \r \t`, `\u00XX` for the rest).
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::{Label, serialize_json};

    fn serde_form(l: &Label, sig: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        serialize_json(&l.as_ref(), sig, &mut serde_json::Serializer::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn hand_written_json_matches_serde_for_every_shape_and_awkward_strings() {
        let awkward = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f} ü \u{2028} 😀 end";
        for mask in 0..8u8 {
            let l = Label {
                src: "did:web:labeler.example".into(),
                uri: format!("at://did:plc:x/{awkward}"),
                cid: (mask & 1 != 0).then(|| "bafyrei\"x".to_owned()),
                val: "verified-mail-operator".into(),
                neg: mask & 2 != 0,
                cts: "2026-11-20T10:00:00.000Z".into(),
                exp: (mask & 4 != 0).then(|| awkward.to_owned()),
            };
            let sig: Vec<u8> = (0..64)
                .map(|i| (i * 37 + usize::from(mask)) as u8)
                .collect();
            let mut ours = Vec::new();
            write_label_json(&mut ours, &l.as_ref(), &sig);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde_form(&l, &sig)).unwrap(),
                "mask {mask}"
            );
        }
    }

    #[test]
    fn uri_patterns_parse_as_exact_or_prefix_and_bad_ones_are_named() {
        assert_eq!(
            pattern("did:plc:a").unwrap(),
            UriPattern::Exact("did:plc:a".into())
        );
        assert_eq!(
            pattern("did:plc:a*").unwrap(),
            UriPattern::Prefix("did:plc:a".into())
        );
        assert_eq!(pattern("*").unwrap(), UriPattern::Prefix(String::new()));
        for bad in ["*did", "did:*:a", "a**", "**"] {
            let e = pattern(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn query_parameters_parse_with_defaults_and_bad_ones_are_refused() {
        let q = parse("uriPatterns=a&uriPatterns=b*&sources=did:web:x&limit=7&cursor=9").unwrap();
        assert_eq!(
            q,
            LabelQuery {
                patterns: vec![
                    UriPattern::Exact("a".into()),
                    UriPattern::Prefix("b".into())
                ],
                sources: vec!["did:web:x".into()],
                after: 9,
                limit: 7,
            }
        );
        assert_eq!(parse("uriPatterns=a").unwrap().limit, 50);
        for bad in [
            "",
            "limit=5",
            "uriPatterns=a&limit=0",
            "uriPatterns=a&limit=251",
            "uriPatterns=a&limit=x",
            "uriPatterns=a&cursor=x",
            "uriPatterns=a&cursor=-1",
            "uriPatterns=a&sources=example.com",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
